"""Non-square inputs through the FINN flow: the global TruncAvgPool2d over an h x w map
(h != w) lowers via compilers/finn/custom_ops.py, bit-exact at every stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_finn_models import BITS, conv, randomize, relu

from compilers.finn import STEPS, lower
from compilers.finn.checks import find_problems
from quant.preprocess import to_input
from targets.fpga_parts import get_part

qnn = pytest.importorskip("brevitas.nn")
from brevitas.quant import RoundTo8bit, TruncTo8bit  # noqa: E402

H, W = 16, 40


def rect_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 1, h, w]: brightness, gradients and noise (varied logits)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    yy, xx = yy / h, xx / w
    out = np.empty((n, 1, h, w), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-120, 120, 3)
        img = rng.uniform(30, 220) + a * xx + b * yy + c * (xx - 0.5) * (yy - 0.5) + rng.normal(0, 20, (h, w))
        out[i, 0] = np.clip(img, 0, 255).astype(np.uint8)
    return out


class RectNet(nn.Module):
    """conv s2 -> conv s2 -> conv s2 (h/8 x w/8) -> global TruncAvgPool2d((h/8, w/8)) -> linear."""

    def __init__(self, classes=3, size=(H, W), trunc=TruncTo8bit):
        super().__init__()
        self.body = nn.Sequential(conv(1, 8, s=2), nn.BatchNorm2d(8), relu(),
                                  conv(8, 16, s=2), nn.BatchNorm2d(16), relu(),
                                  conv(16, 16, s=2), nn.BatchNorm2d(16), relu())
        k = (size[0] // 8, size[1] // 8)
        self.pool = qnn.TruncAvgPool2d(kernel_size=k, stride=k, trunc_quant=trunc)
        self.fc = qnn.QuantLinear(16, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def _build(tmp_path, **kw):
    from brevitas.export import export_qonnx

    torch.manual_seed(0)
    model = randomize(RectNet(**kw), 0)
    model.train()
    with torch.no_grad():
        x = to_input(rect_images(64, H, W, 1))
        model(x), model(x)
    model.eval()
    path = tmp_path / "rect.onnx"
    export_qonnx(model, torch.zeros(1, 1, H, W), str(path))
    return path, model


def test_non_square_global_pool_lowers_bit_exact(tmp_path):
    path, model = _build(tmp_path)
    pixels = rect_images(32, H, W, seed=3)
    with torch.no_grad():
        reference = model(to_input(pixels)).numpy()
    result = lower(path, tmp_path / "out", get_part("zcu104"), clock_mhz=200, target_fps=5000,
                   samples_uint8=pixels, reference_logits=reference, log=lambda m: None)
    assert [p.stage for p in result.parity] == [s.__name__ for s in STEPS]
    assert result.bit_exact, [p.to_dict() for p in result.parity if not p.exact]
    assert len(result.notes["rect_avgpools"]) == 1
    assert result.host_ops == ["Transpose_0 (Transpose)"]  # only the input layout change stays on the host
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    final = ModelWrapper(str(result.final_model))
    (pool,) = [n for n in final.graph.node if n.op_type == "Pool_hls"]
    assert getCustomOp(pool).get_nodeattr("KernelSize") == [H // 8, W // 8]
    swg = [getCustomOp(n) for n in final.graph.node if n.op_type.startswith("ConvolutionInputGenerator")]
    assert [H // 8, W // 8] in [s.get_nodeattr("ConvKernelDim") for s in swg]
    assert result.generated_sources[pool.name]


def test_preflight_names_a_non_square_pool_finn_cannot_lower(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    path, _ = _build(tmp_path)
    assert find_problems(ModelWrapper(str(path))) == []
    path, _ = _build(tmp_path, trunc=RoundTo8bit)
    (p,) = find_problems(ModelWrapper(str(path)))
    assert p.rule == "avgpool" and p.layer == "pool" and "TruncTo8bit" in p.hint
    assert "\n" not in p.message()


def test_check_fpga_accepts_non_square_inputs():
    from quant.models import check_fpga, create_model

    check_fpga(create_model("resnet8", 2, (32, 80), width=0.25))


def test_check_fpga_names_a_3x3_conv_on_a_one_row_map():
    from core.errors import UserError
    from quant.models import check_fpga, create_model

    with pytest.raises(UserError, match=r"8x64 leaves a 1x8 map at the 3x3 conv 'layers.2.conv2' \[conv-1d-map\]"):
        check_fpga(create_model("resnet8", 2, (8, 64), width=0.25))
