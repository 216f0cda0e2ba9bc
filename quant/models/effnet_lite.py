"""effnet_lite: EfficientNet-Lite0 / MobileNetV2-style network that lowers fully through FINN.

Inverted residual block: 1x1 expand -> BN -> ReLU6, depthwise 3x3 (groups=C) -> BN -> ReLU6,
1x1 project -> BN -> signed quantizer (the linear bottleneck: no activation). No
squeeze-excite, no SiLU (FINN lowers neither). A block has a residual when its stride is 1
and its input and output channels match; then the projection and the skip input pass
through the same quantizer instance (`add_quant`) and the sum is re-quantized by `out_quant`.

Stage layout is EfficientNet-Lite0's (expand ratio, channels, repeats, stride) with every
depthwise kernel 3x3 (Lite0 uses 5x5 in three stages): stem 32 (stride 2), then
(1,16,1,1) (6,24,2,2) (6,40,2,2) (6,80,3,2) (6,112,3,1) (6,192,4,2) (6,320,1,1), 1x1 head
conv to 1280, global average pool, linear. Total stride 32. `width` scales every channel
count including the head (Lite0 keeps the head at 1280; small FPGA builds need it scaled).
ReLU6 is the float twin's activation; the quantized model uses a learned clip initialised at 6.
"""
from __future__ import annotations

from torch import nn

from quant.models.layers import Bits, Layers, conv_out, make_divisible
from quant.models.registry import register_model

LITE0 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 40, 2, 2), (6, 80, 3, 2), (6, 112, 3, 1), (6, 192, 4, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    def __init__(self, L: Layers, cin: int, cout: int, expand: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(L.conv(cin, mid, 1), nn.BatchNorm2d(mid), L.relu6())
        self.dw = nn.Sequential(L.conv(mid, mid, 3, stride, groups=mid), nn.BatchNorm2d(mid), L.relu6())
        self.project = nn.Sequential(L.conv(mid, cout, 1), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout
        self.add_quant = L.signed_quant()  # linear bottleneck; also quantizes the skip input
        self.out_quant = L.signed_quant() if self.residual else None

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.add_quant(self.project(self.dw(y)))
        if self.residual:
            y = self.out_quant(y + self.add_quant(x))
        return y


class EffNetLite(nn.Module):
    def __init__(self, L: Layers, num_classes: int, in_size: tuple[int, int], width: float):
        super().__init__()
        c = lambda ch: make_divisible(ch * width)  # noqa: E731
        self.input_quant = L.input_quant()
        stem = c(32)
        self.stem = nn.Sequential(L.conv(1, stem, 3, 2, edge=True), nn.BatchNorm2d(stem), L.relu6())
        size = conv_out(in_size, 2)
        blocks, cin = [], stem
        for expand, ch, n, stride in LITE0:
            for i in range(n):
                s = stride if i == 0 else 1
                blocks.append(InvertedResidual(L, cin, c(ch), expand, s))
                size = conv_out(size, s)
                cin = c(ch)
        self.blocks = nn.Sequential(*blocks)
        head = c(1280)
        self.head = nn.Sequential(L.conv(cin, head, 1), nn.BatchNorm2d(head), L.relu6())
        self.feature_size = size
        self.pool = L.global_pool(size)
        self.fc = L.linear(head, num_classes)

    def forward_features(self, x):
        """The last feature map, before the global pool (timm's split)."""
        return self.head(self.blocks(self.stem(self.input_quant(x))))

    def forward_head(self, x):
        return self.fc(self.pool(x).flatten(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(family="efficientnet", fpga_lowerable=True)
def effnet_lite(num_classes: int, in_size: tuple[int, int], width: float, bits: Bits | None) -> EffNetLite:
    """EfficientNet-Lite0 layout, 3x3 depthwise, ReLU6, no SE (MobileNetV2-style), total stride 32."""
    return EffNetLite(Layers(bits), num_classes, in_size, width)
