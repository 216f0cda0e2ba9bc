"""effnet_b0: EfficientNet-B0 (MBConv + SiLU + squeeze-excite), float only.

Plain torch: its INT8 model comes from NNCF for the NPU/GPU targets. FINN cannot lower
SiLU or squeeze-excite, so there is no Brevitas variant.
Layout is B0's: stem 32 (stride 2); (expand, channels, repeats, stride, kernel)
(1,16,1,1,3) (6,24,2,2,3) (6,40,2,2,5) (6,80,3,2,3) (6,112,3,1,5) (6,192,4,2,5) (6,320,1,1,3);
1x1 head to 1280; global average pool; linear. Squeeze-excite reduces to 1/4 of the block's
input channels. One input channel; no dropout or stochastic depth (deterministic training).
`width` scales every channel count (rounded to a multiple of 8), not depth or resolution.
"""
from __future__ import annotations

from torch import nn

from quant.models.layers import Bits, make_divisible
from quant.models.registry import register_model

B0 = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
      (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, kernel: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn_act(cin, mid, 1) if expand != 1 else None
        self.dw = _conv_bn_act(mid, mid, kernel, stride, groups=mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.dw(y)))
        return x + y if self.residual else y


class EffNetB0(nn.Module):
    def __init__(self, num_classes: int, width: float):
        super().__init__()
        c = lambda ch: make_divisible(ch * width, 8)  # noqa: E731
        self.stem = _conv_bn_act(1, c(32), 3, 2)
        blocks, cin = [], c(32)
        for expand, ch, n, stride, kernel in B0:
            for i in range(n):
                blocks.append(MBConv(cin, c(ch), expand, stride if i == 0 else 1, kernel))
                cin = c(ch)
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(cin, c(1280), 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c(1280), num_classes)

    def forward_features(self, x):
        """The last feature map, before the global pool (timm's split)."""
        return self.head(self.blocks(self.stem(x)))

    def forward_head(self, x):
        return self.fc(self.pool(x).flatten(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(family="efficientnet", fpga_lowerable=False, int8_only=True)
def effnet_b0(num_classes: int, in_size: tuple[int, int], width: float, bits: Bits | None) -> EffNetB0:
    """EfficientNet-B0 (MBConv, SiLU, squeeze-excite), float only: INT8 via NNCF for npu/gpu."""
    assert bits is None, "effnet_b0 has no Brevitas variant"
    return EffNetB0(num_classes, width)
