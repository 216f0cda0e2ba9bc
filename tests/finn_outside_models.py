"""Models as a Brevitas user outside qdeploy writes them, for the bring-your-own-model tests.

Random weights, BatchNorm calibrated on sample images, exported with brevitas's own
`export_qonnx` (its default dynamo exporter, or TorchScript with dynamo=False), with no
cleanup: what a user hands to `qdeploy build --target fpga --model M.onnx --samples DIR`.
The model takes pixels / 255 (float in [0, 1]) like every qdeploy model.

- VGG:       CIFAR-style conv stack on C x S x S (3x3 convs, max pools, a last 3x3 conv
             down to 1x1), W1A1 (bipolar weights and activations) or W2A2.
- MLP:       a 28x28 MLP (flatten, linear, BN, bipolar activation), W1A1.
- ResNet:    a stride-2 stem, one identity and one downsampling residual block.
- MobileNet: MobileNet-v1-style depthwise-separable blocks.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from brevitas import nn as qnn
from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst, TruncTo8bit


def weight_kw(bits: int) -> dict:
    return dict(weight_quant=SignedBinaryWeightPerTensorConst) if bits == 1 else dict(weight_bit_width=bits)


def act(bits: int, per_channel: int = 0) -> nn.Module:
    """A quantized activation; per_channel=C: one scale per channel (of C channels)."""
    if bits == 1:
        return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
    if per_channel:
        return qnn.QuantReLU(bit_width=bits, scaling_per_output_channel=True,
                             per_channel_broadcastable_shape=(1, per_channel, 1, 1), scaling_stats_permute_dims=(1, 0, 2, 3),
                             return_quant_tensor=True)
    return qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)


def conv(cin, cout, bits, k=3, s=1, pad=None, groups=1):
    return qnn.QuantConv2d(cin, cout, k, stride=s, padding=k // 2 if pad is None else pad, groups=groups,
                           bias=False, **weight_kw(bits))


class VGG(nn.Module):
    """CIFAR-style conv stack ending in a 3x3 conv on a 3x3 map (1x1 output), then linear.

    pad=1 (size 12): conv, conv, pool, conv, pool, conv(pad 0).
    pad=0 (FINN's CNV layout, every conv unpadded): size 14: conv, conv, pool, conv, conv;
    size 32: (conv, conv, pool) x2, conv, conv (CNV-W1A1/W2A2 at width 64).
    """

    def __init__(self, channels=3, size=12, wbits=2, abits=2, classes=4, width=8, pad=1):
        super().__init__()
        w = width

        def block(cin, cout, p):
            return [conv(cin, cout, wbits, pad=p), nn.BatchNorm2d(cout), act(abits)]

        if pad:
            assert size == 12, "pad=1: the last conv reads a 3x3 map at size 12"
            layers = block(channels, w, 1) + block(w, w, 1) + [nn.MaxPool2d(2)] + block(w, 2 * w, 1) \
                + [nn.MaxPool2d(2)] + block(2 * w, 2 * w, 0)
        elif size == 14:
            layers = block(channels, w, 0) + block(w, w, 0) + [nn.MaxPool2d(2)] + block(w, 2 * w, 0) \
                + block(2 * w, 2 * w, 0)
        else:  # FINN's CNV: 32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5 -> 3 -> 1
            assert size == 32, "pad=0: the last conv reads a 3x3 map at size 14 or 32"
            layers = block(channels, w, 0) + block(w, w, 0) + [nn.MaxPool2d(2)] + block(w, 2 * w, 0) \
                + block(2 * w, 2 * w, 0) + [nn.MaxPool2d(2)] + block(2 * w, 4 * w, 0) + block(4 * w, 4 * w, 0)
        self.body = nn.Sequential(*layers)
        last = 4 * w if size == 32 else 2 * w
        self.fc = qnn.QuantLinear(last, classes, bias=False, **weight_kw(wbits))

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


class MLP(nn.Module):
    """flatten, (linear, BN, act) x2, linear."""

    def __init__(self, channels=1, size=28, wbits=1, abits=1, classes=4, width=32):
        super().__init__()
        self.body = nn.Sequential(
            qnn.QuantLinear(channels * size * size, width, bias=False, **weight_kw(wbits)), nn.BatchNorm1d(width),
            act(abits),
            qnn.QuantLinear(width, width, bias=False, **weight_kw(wbits)), nn.BatchNorm1d(width), act(abits),
        )
        self.fc = qnn.QuantLinear(width, classes, bias=False, **weight_kw(wbits))

    def forward(self, x):
        return self.fc(self.body(torch.flatten(x, 1)))


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, bits):
        super().__init__()
        self.c1, self.b1, self.r1 = conv(cin, cout, bits, s=stride), nn.BatchNorm2d(cout), act(bits)
        self.c2, self.b2 = conv(cout, cout, bits), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(conv(cin, cout, bits, k=1, s=stride), nn.BatchNorm2d(cout))
        self.q = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)  # one quantizer for both operands
        self.out = act(bits)

    def forward(self, x):
        y = self.b2(self.c2(self.r1(self.b1(self.c1(x)))))
        sc = x if self.down is None else self.down(x)
        return self.out(self.q(y) + self.q(sc))


class ResNet(nn.Module):
    def __init__(self, channels=3, size=16, wbits=4, abits=4, classes=4, width=8):
        super().__init__()
        self.stem = nn.Sequential(conv(channels, width, wbits, s=2), nn.BatchNorm2d(width), act(abits))
        self.l1 = _Block(width, width, 1, abits)
        self.l2 = _Block(width, 2 * width, 2, abits)
        self.pool = qnn.TruncAvgPool2d(kernel_size=size // 4, stride=size // 4, trunc_quant=TruncTo8bit)
        self.fc = qnn.QuantLinear(2 * width, classes, bias=False, **weight_kw(wbits))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.l2(self.l1(self.stem(x)))), 1))


class MobileNet(nn.Module):
    """MobileNet-v1 style: stride-2 stem, depthwise 3x3 -> pointwise 1x1 blocks, pool, linear."""

    def __init__(self, channels=3, size=16, wbits=4, abits=4, classes=4, width=8, per_channel=""):
        """per_channel: "" per-tensor activation scales; "dw": per-channel scales on the activations
        that feed depthwise convs; "all": on every activation."""
        super().__init__()
        c = width

        def pc(n, feeds_dw):
            return n if per_channel == "all" or (per_channel == "dw" and feeds_dw) else 0

        layers = [conv(channels, c, wbits, s=2), nn.BatchNorm2d(c), act(abits, pc(c, True))]
        blocks = [(2 * width, 2), (2 * width, 1)]
        for i, (cout, s) in enumerate(blocks):
            layers += [conv(c, c, wbits, s=s, groups=c), nn.BatchNorm2d(c), act(abits, pc(c, False)),
                       conv(c, cout, wbits, k=1), nn.BatchNorm2d(cout), act(abits, pc(cout, i + 1 < len(blocks)))]
            c = cout
        self.body = nn.Sequential(*layers)
        self.pool = qnn.TruncAvgPool2d(kernel_size=size // 4, stride=size // 4, trunc_quant=TruncTo8bit)
        self.fc = qnn.QuantLinear(c, classes, bias=False, **weight_kw(wbits))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, C, size, size]: per-image, per-channel brightness, gradients and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        for c in range(channels):
            a, b, d = rng.uniform(-120, 120, 3)
            img = rng.uniform(30, 220) + a * xx + b * yy + d * (xx - 0.5) * (yy - 0.5) + rng.normal(0, 20, (size, size))
            out[i, c] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def build(cls, seed: int = 0, **kw) -> nn.Module:
    """The model with random weights and BN statistics calibrated on sample images."""
    torch.manual_seed(seed)
    model = cls(**kw)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.3
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.3
    x = torch.from_numpy(images(64, kw.get("channels", 3), kw.get("size", 16), seed + 1)).float() / 255
    model.train()
    with torch.no_grad():  # calibrate BN statistics and the activation quantizers
        for _ in range(3):
            model(x)
    return model.eval()


def logits(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(pixels).float() / 255).numpy().astype(np.float32)


def export(model: nn.Module, channels: int, size: int, path, dynamo: bool):
    """brevitas.export.export_qonnx as a user calls it: nothing else."""
    from brevitas.export import export_qonnx

    export_qonnx(model, torch.zeros(1, channels, size, size), str(path), dynamo=dynamo)
    return path
