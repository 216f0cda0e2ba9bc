import sys
from compilers.finn.env import ensure_finn; ensure_finn()
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from targets import fold_space as fs
from targets.fpga_parts import get_part
m = ModelWrapper(sys.argv[1])
part = get_part("zcu104")
for u in fs.find_units(m) if hasattr(fs, "find_units") else []:
    t = fs.unit_table(m, u, part)
    n = m.get_node_from_name(u.nodes[-1])
    i = getCustomOp(n)
    print(f"{u.nodes[-1]:34s} min_cycles={int(t.cycles[0]):6d} max_cycles={int(t.cycles[-1]):7d} in={i.get_normal_input_shape()} out={i.get_normal_output_shape()}")
