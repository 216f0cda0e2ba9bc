"""Experiment: a two-output (decision logits, segmentation map) model through FINN."""
import os, sys, time, json, faulthandler
faulthandler.dump_traceback_later(900, exit=True)
import numpy as np, torch, torch.nn as nn
torch.set_num_threads(1)
sys.path.insert(0, "/work/wt-finn/tests")
from test_finn_models import conv, relu, randomize, Block, BITS
from test_finn_nonsquare import rect_images
import brevitas.nn as qnn
from brevitas.quant import TruncTo8bit
from quant.preprocess import to_input

H, W = int(sys.argv[1]), int(sys.argv[2])
USE_MAX = "--nomax" not in sys.argv

class SegDec(nn.Module):
    def __init__(self, classes=2, size=(H, W)):
        super().__init__()
        self.stem = nn.Sequential(conv(1, 8, s=2), nn.BatchNorm2d(8), relu())
        self.l1 = Block(8, 16, 2)
        self.l2 = Block(16, 16, 2)
        h, w = size[0] // 8, size[1] // 8
        self.seg = conv(16, 1, k=1)
        self.seg_bn = nn.BatchNorm2d(1)
        self.seg_q = relu()
        self.fpool = qnn.TruncAvgPool2d(kernel_size=(h, w), stride=(h, w), trunc_quant=TruncTo8bit)
        self.spool = qnn.TruncAvgPool2d(kernel_size=(h, w), stride=(h, w), trunc_quant=TruncTo8bit)
        self.smax = nn.MaxPool2d(kernel_size=(h, w), stride=(h, w))
        self.cat_q = qnn.QuantReLU(bit_width=8, return_quant_tensor=True)  # one scale for every concat input
        self.fc = qnn.QuantLinear(16 + 1 + int(USE_MAX), classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        f = self.l2(self.l1(self.stem(x)))
        s = self.seg_q(self.seg_bn(self.seg(f)))
        parts = [self.cat_q(self.fpool(f)), self.cat_q(self.spool(s))]
        if USE_MAX:
            parts.append(self.cat_q(self.smax(s)))
        if "--cat4d" in sys.argv:
            z = torch.flatten(torch.cat(parts, dim=1), 1)
        else:
            z = torch.cat([torch.flatten(p, 1) for p in parts], dim=1)  # concat on the last axis
        return self.fc(z), (s.value if hasattr(s, "value") else s)

torch.manual_seed(0)
m = randomize(SegDec(), 0); m.train()
x = to_input(rect_images(64, H, W, 1))
with torch.no_grad():
    for _ in range(3): m(x)
m.eval()
from quant.export import export_qonnx
p = f"/tmp/segdec_{H}x{W}.onnx"
export_qonnx(m, (H, W), p)
from qonnx.core.modelwrapper import ModelWrapper
g = ModelWrapper(p)
print("outputs", [(o.name, g.get_tensor_shape(o.name)) for o in g.graph.output])
print([n.op_type for n in g.graph.node])

if "--steps" in sys.argv:
    from pathlib import Path
    from compilers.finn import steps as S
    from compilers.finn.flow import run_steps, clear_outputs
    from compilers.finn.env import ensure_finn, finn_build_dir
    from targets.fpga_parts import get_part
    from quant import float64_values
    ensure_finn()
    model = ModelWrapper(p); float64_values.widen(model.model)
    cfg = S.FlowConfig(Path(f"/tmp/exp_segdec_{H}x{W}"), get_part("zcu104"), 200.0, 1000.0, 0.7)
    clear_outputs(cfg)
    with finn_build_dir(cfg.finn_tmp):
        out, times = run_steps(model, cfg)
    print(json.dumps(times)); print("host", cfg.notes.get("host_ops"))
    print([n.op_type for n in out.graph.node])
    print("partition outputs", [o.name for o in out.graph.output])
if "--lower" in sys.argv:
    from compilers.finn import lower
    from targets.fpga_parts import get_part
    import copy
    pix = rect_images(16, H, W, 3)
    md = copy.deepcopy(m).double().eval()
    with torch.no_grad():
        lo, seg = md(to_input(pix).double())
    ref = [lo.numpy(), seg.numpy().reshape(len(pix), -1)]
    fold = None
    if "--fold" in sys.argv:
        from targets.folding import fold
    t = time.time()
    r = lower(p, f"/tmp/exp_segdec_l_{H}x{W}", get_part("zcu104"), clock_mhz=200, target_fps=float(os.environ.get("FPS", 1000)),
              samples_uint8=pix, reference_logits=ref, folding=fold, parity_batch=16)
    print("lower total", round(time.time() - t, 1)); print(json.dumps(r.time_per_step))
    for s_ in r.parity: print(s_.stage, s_.exact, s_.rel_diff, s_.argmax_agreement, s_.same_as, s_.outputs and [o["rel_diff"] for o in s_.outputs], s_.first_divergence)
    print("est_fps", r.est_fps, r.resources, "bit_exact", r.bit_exact, "host", r.host_ops, r.notes.get("outputs_held"))
