"""Experiment: project ResNet-8 with a non-square input through the FINN flow."""
import os, sys, time, json
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, "/work/wt-finn/tests")
from test_finn_models import randomize, _balance_head
from quant.models import create_model
from quant.export import export_qonnx
from quant.preprocess import to_input
from quant.train import predict

H, W = int(sys.argv[1]), int(sys.argv[2])
width = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
out = f"/tmp/exp_ns_{os.environ.get('MODEL', 'resnet8')}_{H}x{W}"
def imgs(n, h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]; yy = yy / h; xx = xx / w
    o = np.empty((n, 1, h, w), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-120, 120, 3); base = rng.uniform(30, 220)
        o[i, 0] = np.clip(base + a*xx + b*yy + c*(xx-.5)*(yy-.5) + rng.normal(0, 20, (h, w)), 0, 255)
    return o
torch.manual_seed(0)
m = create_model(os.environ.get("MODEL", "resnet8"), 3, (H, W), width=width)
randomize(m, 0)
x = to_input(imgs(64, H, W, 1)); m.train()
with torch.no_grad():
    for _ in range(2): m(x)
    _balance_head(m, x)
m.eval()
print("feature_size", m.feature_size)
t = time.time(); p = export_qonnx(m, (H, W), f"/tmp/ns_{os.environ.get('MODEL', 'resnet8')}_{H}x{W}.onnx"); print("export", round(time.time()-t, 1))
pix = imgs(16, H, W, 3)
ref = predict(m, pix, float64=True)
print("ref argmax", np.bincount(ref.argmax(1), minlength=3))
from compilers.finn import lower
from targets.fpga_parts import get_part
fold = None
if "--fold" in sys.argv:
    from targets.folding import fold
t = time.time()
r = lower(p, out, get_part("zcu104"), clock_mhz=200, target_fps=float(os.environ.get("FPS", 1000)), budget=0.7,
          samples_uint8=pix, reference_logits=ref, folding=fold, parity_batch=16)
print("lower total", round(time.time()-t, 1))
print(json.dumps(r.time_per_step))
for s in r.parity: print(s.stage, s.exact, s.rel_diff, s.argmax_agreement, s.same_as, s.first_divergence)
print("est_fps", r.est_fps, r.resources, "bit_exact", r.bit_exact, "host", r.host_ops)
