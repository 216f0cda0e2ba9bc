"""Export SegDec's decision output (DecisionOnly) to QONNX, run compilers/finn/checks.py and
the FINN steps up to and including create_dataflow_partition (no Vivado needed).

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/check_segdec_finn.py --size 256x384 \
        [--ckpt /tmp/segdec_runs/final1/qat.pt] --out /tmp/segdec_finn

Without --ckpt the weights are random (lowerability does not depend on their values;
the activation scales are calibrated on a few random batches first).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quant.models.layers import Bits  # noqa: E402
from quant.models.segdec import DecisionOnly, create_segdec  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="256x384")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--context", type=int, default=1)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--out", default="/tmp/segdec_finn")
    p.add_argument("--until", default="create_dataflow_partition")
    p.add_argument("--gap-first", type=int, default=1,
                   help="convert GlobalAveragePool -> GlobalAccPool + Mul and absorb the Mul into the next "
                        "MultiThreshold before FINN's convert_to_hw (else the Mul blocks partitioning)")
    a = p.parse_args()
    torch.set_num_threads(1)
    size = tuple(int(v) for v in a.size.split("x"))
    model = create_segdec(2, size, a.width, Bits(4, 4, 8), context=a.context)
    if a.ckpt:
        model.load_state_dict(torch.load(a.ckpt))
    else:
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.rand(2, 1, *size))
    model.eval()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from compilers.finn import flow, steps as S
    from compilers.finn.checks import find_problems
    from compilers.finn.env import ensure_finn, finn_build_dir
    from quant.export import export_qonnx
    from targets.fpga_parts import get_part

    t = time.perf_counter()
    path = export_qonnx(DecisionOnly(model), size, out / "segdec.qonnx.onnx")
    print(f"exported {path} ({time.perf_counter() - t:.0f} s)")
    m = flow.load_qonnx(path)
    print("ops:", sorted({n.op_type for n in m.graph.node}))
    problems = find_problems(m)
    print("checks.find_problems:", [str(p) for p in problems] or "none")
    ensure_finn()
    names = [s.__name__ for s in flow.STEPS]
    steps = list(flow.STEPS[: names.index(a.until) + 1])
    if a.gap_first:
        def convert_to_hw(model, cfg):  # same name: run_steps' exact-until logic keys on it
            from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
            from finn.transformation.streamline.absorb import AbsorbMulIntoMultiThreshold
            from finn.transformation.streamline.reorder import MoveScalarMulPastMatMul  # noqa: F401
            from qonnx.transformation.infer_datatypes import InferDataTypes
            from qonnx.transformation.infer_shapes import InferShapes
            model = model.transform(InferGlobalAccPoolLayer()).transform(InferShapes())
            model = model.transform(AbsorbMulIntoMultiThreshold()).transform(InferDataTypes())
            left = [n.name for n in model.graph.node if n.op_type == "Mul"]
            print("Muls left after GlobalAccPool + absorb:", left)
            return S.convert_to_hw(model, cfg)
        steps[names.index("convert_to_hw")] = convert_to_hw
    cfg = S.FlowConfig(out.resolve(), get_part("zcu104"), 200.0, 1000.0, 0.7)
    with finn_build_dir(cfg.finn_tmp):
        model_out, times = flow.run_steps(m, cfg, steps)
    print("step times:", times)
    print("notes:", cfg.notes)
    print("final ops:", sorted({n.op_type for n in model_out.graph.node}))


if __name__ == "__main__":
    main()
