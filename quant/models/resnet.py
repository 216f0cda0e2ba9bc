"""ResNet-8 and ResNet-18 for small grayscale inputs, written to lower fully through FINN.

Topology (both): stride-2 3x3 conv stem (no MaxPool: its forking output breaks FINN),
stages of BasicBlocks, global average pool over the whole final map, a bias-free linear head.
- resnet8: stem 16, stages 16/32/64 with one block each, strides 1/2/2 (total stride 8;
  the MLPerf-Tiny ResNet-8 layout). 64x64 -> 8x8 before the pool.
- resnet18: stem 64, stages 64/128/256/512 with two blocks each, strides 1/2/2/2 (total
  stride 16: the ImageNet 7x7 stem + MaxPool is replaced by one 3x3 stride-2 conv).

A BasicBlock's residual Add quantizes both operands with the same `add_quant` instance, so
both share one scale and FINN adds integers; a downsampling shortcut is 1x1 conv + BN.
"""
from __future__ import annotations

from torch import nn

from quant.models.layers import Bits, Layers, conv_out, make_divisible
from quant.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, L: Layers, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = L.conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = L.relu()
        self.conv2 = L.conv(cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(L.conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        self.add_quant = L.signed_quant()  # one instance for both operands of the Add
        self.relu2 = L.relu()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.add_quant(y) + self.add_quant(shortcut))


class ResNet(nn.Module):
    def __init__(self, L: Layers, num_classes: int, in_size: tuple[int, int], stem: int,
                 stages: tuple[tuple[int, int, int], ...]):
        """stages: (channels, blocks, first-block stride) per stage."""
        super().__init__()
        self.input_quant = L.input_quant()
        self.stem = nn.Sequential(L.conv(1, stem, 3, 2, edge=True), nn.BatchNorm2d(stem), L.relu())
        size = conv_out(in_size, 2)
        blocks, cin = [], stem
        for cout, n, stride in stages:
            for i in range(n):
                blocks.append(BasicBlock(L, cin, cout, stride if i == 0 else 1))
                size = conv_out(size, stride if i == 0 else 1)
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.feature_size = size
        self.pool = L.global_pool(size)
        self.fc = L.linear(cin, num_classes)

    def forward_features(self, x):
        """The last feature map, before the global pool (timm's split)."""
        return self.layers(self.stem(self.input_quant(x)))

    def forward_head(self, x):
        return self.fc(self.pool(x).flatten(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _c(channels: int, width: float) -> int:
    return make_divisible(channels * width)


@register_model(family="resnet", fpga_lowerable=True)
def resnet8(num_classes: int, in_size: tuple[int, int], width: float, bits: Bits | None) -> ResNet:
    """ResNet-8: 3x3 stride-2 stem, 3 stages x 1 BasicBlock (16/32/64), total stride 8."""
    return ResNet(Layers(bits), num_classes, in_size, _c(16, width),
                  ((_c(16, width), 1, 1), (_c(32, width), 1, 2), (_c(64, width), 1, 2)))


@register_model(family="resnet", fpga_lowerable=True)
def resnet18(num_classes: int, in_size: tuple[int, int], width: float, bits: Bits | None) -> ResNet:
    """ResNet-18: 3x3 stride-2 stem, 4 stages x 2 BasicBlocks (64..512), total stride 16."""
    return ResNet(Layers(bits), num_classes, in_size, _c(64, width),
                  ((_c(64, width), 2, 1), (_c(128, width), 2, 2), (_c(256, width), 2, 2), (_c(512, width), 2, 2)))
