"""Small Brevitas models for the FINN tests (until quant.models lands), and their QONNX export.

Lowerable ones follow ../shared/notes/fpga-finn.md: W4A4, no input quantizer (raw
pixels), QuantConv2d(bias=False) -> BN -> QuantReLU, residual Add of two operands
quantized by one shared QuantIdentity, TruncAvgPool2d global pool, QuantLinear head.
The others each break one FINN rule.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

brevitas_nn = pytest.importorskip("brevitas.nn")
qnn = brevitas_nn
from brevitas.quant import TruncTo8bit  # noqa: E402

from quant.preprocess import to_input  # noqa: E402

BITS = 4


def conv(cin, cout, k=3, s=1, groups=1):
    return qnn.QuantConv2d(cin, cout, k, stride=s, padding=k // 2, groups=groups, bias=False, weight_bit_width=BITS)


def relu():
    return qnn.QuantReLU(bit_width=BITS, return_quant_tensor=True)


def gap(k):
    return qnn.TruncAvgPool2d(kernel_size=k, stride=k, trunc_quant=TruncTo8bit)


class PlainCNN(nn.Module):
    """conv-bn-relu-maxpool x2, stride-2 conv, global pool, linear."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.body = nn.Sequential(
            conv(1, 8), nn.BatchNorm2d(8), relu(), nn.MaxPool2d(2),
            conv(8, 16), nn.BatchNorm2d(16), relu(), nn.MaxPool2d(2),
            conv(16, 16, s=2), nn.BatchNorm2d(16), relu(),
        )
        self.pool = gap(size // 8)
        self.fc = qnn.QuantLinear(16, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(cin, cout, s=stride), nn.BatchNorm2d(cout), relu()
        self.c2, self.b2 = conv(cout, cout), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(conv(cin, cout, k=1, s=stride), nn.BatchNorm2d(cout))
        self.q = qnn.QuantIdentity(bit_width=BITS, return_quant_tensor=True)  # shared by both operands
        self.out = relu()

    def forward(self, x):
        y = self.b2(self.c2(self.r1(self.b1(self.c1(x)))))
        sc = x if self.down is None else self.down(x)
        return self.out(self.q(y) + self.q(sc))


class ResidualNet(nn.Module):
    """stride-2 stem, one identity block, one downsampling block, global pool, linear."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.stem = nn.Sequential(conv(1, 8, s=2), nn.BatchNorm2d(8), relu())
        self.l1 = Block(8, 8, 1)
        self.l2 = Block(8, 16, 2)
        self.pool = gap(size // 4)
        self.fc = qnn.QuantLinear(16, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.l2(self.l1(self.stem(x)))), 1))


class MobileNetV1(nn.Module):
    """stride-2 stem, two depthwise-separable blocks (dw 3x3 -> pw 1x1), global pool, linear."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        layers, c = [conv(1, 8, s=2), nn.BatchNorm2d(8), relu()], 8
        for cout, s in [(16, 2), (16, 1)]:
            layers += [conv(c, c, s=s, groups=c), nn.BatchNorm2d(c), relu(),
                       conv(c, cout, k=1), nn.BatchNorm2d(cout), relu()]
            c = cout
        self.body = nn.Sequential(*layers)
        self.pool = gap(size // 4)
        self.fc = qnn.QuantLinear(c, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


# --- models FINN cannot lower -------------------------------------------------------------


class SiLUNet(nn.Module):
    def __init__(self, classes=3, size=16):
        super().__init__()
        self.c1, self.b1, self.act = conv(1, 8), nn.BatchNorm2d(8), nn.SiLU()
        self.q = qnn.QuantIdentity(bit_width=BITS, return_quant_tensor=True)
        self.c2, self.b2, self.r2 = conv(8, 8, s=2), nn.BatchNorm2d(8), relu()
        self.pool = gap(size // 2)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        x = self.q(self.act(self.b1(self.c1(x))))
        return self.fc(torch.flatten(self.pool(self.r2(self.b2(self.c2(x)))), 1))


class SENet(nn.Module):
    """A squeeze-excite block (float pool -> 1x1 convs -> sigmoid gate -> Mul)."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(1, 8), nn.BatchNorm2d(8), relu()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = qnn.QuantConv2d(8, 4, 1, weight_bit_width=BITS)
        self.fc2 = qnn.QuantConv2d(4, 8, 1, weight_bit_width=BITS)
        self.q = qnn.QuantIdentity(bit_width=BITS, return_quant_tensor=True)
        self.pool = gap(size)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.squeeze(x)))))
        x = self.q(x * gate)
        return self.fc(torch.flatten(self.pool(x), 1))


class AdaptivePoolNet(nn.Module):
    """nn.AdaptiveAvgPool2d head: a float ReduceMean/GlobalAveragePool feeds the linear layer."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(1, 8, s=2), nn.BatchNorm2d(8), relu()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.r1(self.b1(self.c1(x)))), 1))


class FloatConvNet(nn.Module):
    """A plain nn.Conv2d (float weights) in the middle."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(1, 8, s=2), nn.BatchNorm2d(8), relu()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2, self.r2 = nn.BatchNorm2d(8), relu()
        self.pool = gap(size // 2)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x.value if hasattr(x, "value") else x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class MaxPoolForkNet(nn.Module):
    """A MaxPool stem whose output feeds both branches of a residual block."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(1, 8), nn.BatchNorm2d(8), relu()
        self.mp = nn.MaxPool2d(2)
        self.block = Block(8, 8, 1)
        self.pool = gap(size // 2)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        x = self.mp(self.r1(self.b1(self.c1(x))))
        return self.fc(torch.flatten(self.pool(self.block(x)), 1))


class PoolAfterMaxPoolNet(nn.Module):
    """The truncating global pool reads a MaxPool output (FINN cannot infer the Trunc's sign)."""

    def __init__(self, classes=3, size=16):
        super().__init__()
        self.body = nn.Sequential(conv(1, 8), nn.BatchNorm2d(8), relu(), nn.MaxPool2d(2))
        self.pool = gap(size // 2)
        self.fc = qnn.QuantLinear(8, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


class SoftmaxNet(PlainCNN):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and weights, so activations spread over the quantizer range."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.3
            m.running_mean.data = torch.randn(n, generator=g) * 0.2
            m.running_var.data = torch.rand(n, generator=g) + 0.5
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.3
    return model


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 1, size, size]: per-image brightness, gradient and noise (varied logits)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-120, 120, 3)
        base = rng.uniform(30, 220)
        img = base + a * xx + b * yy + c * (xx - 0.5) * (yy - 0.5) + rng.normal(0, 20, (size, size))
        out[i, 0] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def build(cls, size=16, seed=0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = randomize(cls(size=size, **kw), seed)
    x = to_input(images(64, size, seed + 1))
    model.train()
    with torch.no_grad():  # let the activation quantizers settle on real statistics
        for _ in range(2):
            model(x)
        _balance_head(model, x)
    return model.eval()


def _balance_head(model: nn.Module, x: torch.Tensor) -> None:
    """Make the head's rows orthogonal to the mean feature, so that the predicted class
    depends on the image (post-ReLU features share a large common component)."""
    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Linear):
        return
    feats = []
    hook = head.register_forward_pre_hook(lambda m, a: feats.append(torch.as_tensor(a[0].value if hasattr(a[0], "value") else a[0])))
    model.eval()
    model(x)
    hook.remove()
    mean = feats[0].mean(dim=0)
    w = head.weight.data
    head.weight.data = w - torch.outer(w @ mean, mean) / (mean @ mean).clamp_min(1e-12)


def logits(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(to_input(pixels)).numpy().astype(np.float32)


_CACHE = Path(tempfile.mkdtemp(prefix="qdeploy-finn-models-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def exported(name: str, size: int = 16, **kw) -> tuple[Path, nn.Module]:
    """(QONNX path, Brevitas model) for one of the classes above, exported once per session."""
    from brevitas.export import export_qonnx

    model = build(globals()[name], size=size, **kw)
    path = _CACHE / f"{name}_{size}_{'_'.join(f'{k}{v}' for k, v in sorted(kw.items()))}.onnx"
    export_qonnx(model, torch.zeros(1, 1, size, size), str(path))
    return path, model


# --- tests of the fixtures themselves ---------------------------------------------------------


def test_images_are_varied_uint8():
    x = images(16, 16)
    assert x.dtype == np.uint8 and x.shape == (16, 1, 16, 16)
    assert x.reshape(16, -1).mean(axis=1).std() > 20  # brightness differs between images


@pytest.mark.parametrize("name", ["PlainCNN", "ResidualNet", "MobileNetV1"])
def test_lowerable_models_give_varied_predictions(name):
    path, model = exported(name)
    y = logits(model, images(64, 16))
    assert path.is_file()
    assert np.bincount(y.argmax(axis=1), minlength=3).min() >= 3  # argmax agreement is a meaningful metric
