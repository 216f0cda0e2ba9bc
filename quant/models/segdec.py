"""SegDec: a segmentation-supervised two-stage defect model (Tabernik et al. 2019, Bozic et al.
2021 "Mixed supervision for surface-defect detection", arXiv 2104.06064), written against
`Layers` so one definition gives the Brevitas QAT model and its float twin (same state_dict
keys for every float tensor: float pre-training -> QAT via transfer.load_float_weights).

    model = create_segdec(num_classes=2, in_size=(256, 384), width=1.0, bits=Bits(4, 4, 8))
    decision_logits, seg_logits = model(x)      # x float [N,1,H,W] in [0,1] (pixels * 1/255)
    # decision_logits [N, C]; seg_logits [N, 1, ceil(H/8), ceil(W/8)] (defect logit per cell)

Topology (FINN rules of /work/shared/notes/fpga-finn.md):
- Encoder: 8-bit input quantizer (constant scale 1/255), 3x3 stride-2 conv stem, ResNet
  BasicBlocks (QuantConv2d(bias=False) -> BN -> QuantReLU; residual Add with both operands
  through the same QuantIdentity; 1x1 conv + BN downsample shortcut). Default stages
  32/s2, 64/s2, then `context` blocks of 64 at stride 1: total stride 8, so a 256x384
  input gives a 32x48 feature map F.
- Segmentation head: 1x1 QuantConv2d(C -> 1, bias=False) -> per-channel affine (a constant
  Mul + Add, the same thing a folded BatchNorm is; streamlining absorbs it into the next
  thresholds) -> signed QuantIdentity (`map_bits`, default 8): the defect-logit map S.
- Decision head: optional stride-2 conv blocks on F (`dec_channels`, the Tabernik decision
  layers), then the global average and global max of the decision features and of S,
  each through ONE shared signed QuantIdentity (`head_bits`), concatenated (same scale and
  datatype, so the Concat lowers to StreamingConcat without a scale in front),
  then QuantLinear(bias=False) -> C logits.

How the pools are expressed (the FINN question):
- Global max: nn.MaxPool2d(kernel_size=(h, w)) over the whole map, exported as ONNX MaxPool
  with a non-square kernel_shape; FINN's InferPool reads kernel_shape (kh, kw) for MaxPool,
  so a non-square max is accepted (Pool with MaxPool function). Its input is a quantizer
  output (F's QuantReLU / S's QuantIdentity) and its only consumer is the shared head
  quantizer (no MaxPool output fork).
- Global average: for a square map and `avg="trunc"`, TruncAvgPool2d(kernel=h, stride=h,
  TruncTo8bit) after the QuantReLU, as in resnet.py (only for F: it needs an unsigned
  input). Otherwise (`avg="mean"`, any H x W): nn.AdaptiveAvgPool2d(1) followed by the
  shared head quantizer. It exports as ReduceMean(axes=[2,3], keepdims=1), which is
  exactly GlobalAveragePool; FINN converts GlobalAveragePool to GlobalAccPool + a scalar Mul
  (convert_to_hw/global_acc_pool.py), with no square restriction, whereas FINN's
  QuantAvgPool2d (from TruncAvgPool2d) takes one scalar kernel, i.e. square only. So the
  non-square average needs the one-node rewrite ReduceMean -> GlobalAveragePool before
  the FINN flow (see SEGDEC_RESULTS.md); compilers/finn/checks.py accepts a ReduceMean
  that is followed by a quantizer.
- The model has two outputs (decision logits, map). A FINN build that wants only the
  decision exports `DecisionOnly(model)`; the map is then internal (its pools feed the head).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from quant.models.effnet_lite import InvertedResidual
from quant.models.layers import Bits, Layers, conv_out, make_divisible
from quant.models.registry import register_model
from quant.models.resnet import BasicBlock


class SegLayers(Layers):
    def signed_bits(self, bits: int) -> nn.Module:
        """A signed quantizer of `bits` (not the model's act bits); float: identity."""
        if not self.quantized:
            return nn.Identity()
        return self._qnn.QuantIdentity(act_quant=self._q["signed"], bit_width=bits, return_quant_tensor=True)


class Affine(nn.Module):
    """y = x * weight[c] + bias[c]: the folded form of a BatchNorm without batch statistics."""

    def __init__(self, channels: int, bias: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.full((channels,), float(bias)))

    def forward(self, x):
        x = x.value if hasattr(x, "value") else x
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _value(x):
    return x.value if hasattr(x, "value") else x


class SegDec(nn.Module):
    def __init__(self, L: SegLayers, num_classes: int, in_size: tuple[int, int], stem: int,
                 stages: Sequence[tuple[int, int, int]], dec_channels: Sequence[int] = (),
                 map_bits: int = 8, head_bits: int = 8, avg: str = "mean", seg_bias: float = -3.0,
                 encoder: str = "resnet", expand: int = 4, features: int = 0):
        """stages: (channels, blocks, first-block stride) per stage. encoder "resnet": BasicBlocks
        with ReLU; "lite": EfficientNet-Lite inverted residuals (ReLU6, `expand`, the first
        stage without expansion, linear bottlenecks) and a 1x1 conv + BN + ReLU6 to `features`
        channels, so that the map and decision heads read unsigned features as in "resnet"."""
        super().__init__()
        if encoder not in ("resnet", "lite"):
            raise ValueError(f"encoder must be resnet or lite, got {encoder!r}")
        act = L.relu6 if encoder == "lite" else L.relu
        self.input_quant = L.input_quant()
        self.stem = nn.Sequential(L.conv(1, stem, 3, 2, edge=True), nn.BatchNorm2d(stem), act())
        size, stride, cin, blocks = conv_out(in_size, 2), 2, stem, []
        for k, (cout, n, s) in enumerate(stages):
            for i in range(n):
                st = s if i == 0 else 1
                blocks.append(BasicBlock(L, cin, cout, st) if encoder == "resnet" else
                              InvertedResidual(L, cin, cout, 1 if k == 0 else expand, st))
                size, cin = conv_out(size, st), cout
            stride *= s
        if encoder == "lite":
            blocks.append(nn.Sequential(L.conv(cin, features, 1), nn.BatchNorm2d(features), L.relu6()))
            cin = features
        self.layers = nn.Sequential(*blocks)
        self.map_size, self.stride = size, stride
        # segmentation head
        self.seg_conv = L.conv(cin, 1, 1)
        self.seg_affine = Affine(1, seg_bias)
        self.seg_quant = L.signed_bits(map_bits)
        # decision head
        dec, dsize, dcin = [], size, cin
        for c in dec_channels:
            dec += [L.conv(dcin, c, 3, 2), nn.BatchNorm2d(c), L.relu()]
            dsize, dcin = conv_out(dsize, 2), c
        self.dec_layers = nn.Sequential(*dec)
        self.feature_size = dsize
        use_trunc = avg == "trunc"  # the float twin pools with AdaptiveAvgPool2d, same head shape
        self.feat_avg = L.global_pool(dsize) if use_trunc else nn.AdaptiveAvgPool2d(1)
        self.feat_max = nn.MaxPool2d(dsize)
        # the map's average is a linear function of the features' average (1x1 conv + affine),
        # which the head already reads; FINN's rectangular average pool takes unsigned values only
        self.map_avg = None if use_trunc else nn.AdaptiveAvgPool2d(1)
        self.map_max = nn.MaxPool2d(size)
        self.head_quant = L.signed_bits(head_bits)  # one instance for every Concat operand
        self.fc = L.linear(2 * dcin + (1 if self.map_avg is None else 2), num_classes)
        self.detach_decision = False  # Bozic et al.: no decision-loss gradient into the encoder

    def forward_seg(self, x):
        """Only the defect-logit map (any input size: used for crop training)."""
        return _value(self.seg_quant(self.seg_affine(self.seg_conv(self.layers(self.stem(self.input_quant(x)))))))

    def forward(self, x):
        f = self.layers(self.stem(self.input_quant(x)))
        s = self.seg_quant(self.seg_affine(self.seg_conv(f)))
        fd, sd = f, s
        if self.detach_decision and self.training:
            fd, sd = _value(f).detach(), _value(s).detach()
        d = self.dec_layers(fd)
        q = self.head_quant
        # flatten each pooled [N,C,1,1] first: the Concat is then over the last axis (FINN's
        # InferConcatLayer did not convert a channel-axis Concat of NCHW [1,C,1,1] tensors)
        parts = [q(self.feat_avg(d)), q(self.feat_max(d)), q(self.map_max(sd))]
        if self.map_avg is not None:
            parts.insert(2, q(self.map_avg(sd)))
        z = torch.cat([torch.flatten(t, 1) for t in parts], 1)
        return self.fc(z), _value(s)


class DecisionOnly(nn.Module):
    """One-output wrapper for an export that needs only the decision logits."""

    def __init__(self, model: SegDec):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def create_segdec(num_classes: int = 2, in_size: tuple[int, int] = (256, 384), width: float = 1.0,
                  bits: Optional[Bits] = Bits(4, 4, 8), context: int = 1, dec_channels: Sequence[int] = (),
                  map_bits: int = 8, head_bits: int = 8, avg: str = "mean") -> SegDec:
    """SegDec, total stride 8: stem 16, stages 32 (s2), 64 (s2), `context` more 64-blocks at s1.

    bits=None builds the float twin. Channels are make_divisible(c * width).
    """
    c = lambda n: make_divisible(n * width)  # noqa: E731
    stages = [(c(32), 1, 2), (c(64), 1, 2)] + ([(c(64), context, 1)] if context else [])
    model = SegDec(SegLayers(bits), num_classes, tuple(in_size), c(16), stages,
                   dec_channels=[c(d) for d in dec_channels], map_bits=map_bits, head_bits=head_bits, avg=avg)
    model.create_args = dict(name="segdec", num_classes=num_classes, in_size=list(in_size), width=float(width),
                             weight_bits=bits.weight if bits else None, act_bits=bits.act if bits else None,
                             input_bits=bits.input if bits else None, quantized=bits is not None,
                             context=context, dec_channels=list(dec_channels), map_bits=map_bits,
                             head_bits=head_bits, avg=avg)
    return model


@register_model(family="resnet", fpga_lowerable=True, segmentation=True)
def segdec(num_classes: int, in_size: tuple[int, int], width: float, bits: Optional[Bits]) -> SegDec:
    """SegDec: ResNet encoder to 1/8, a defect-map head and a decision head on features and map (two outputs)."""
    return create_segdec(num_classes, in_size, width, bits, context=1, avg="trunc")


def create_segdec_lite(num_classes: int = 2, in_size: tuple[int, int] = (256, 384), width: float = 1.0,
                       bits: Optional[Bits] = Bits(4, 4, 8)) -> SegDec:
    """SegDec with an EfficientNet-Lite encoder, total stride 8: stem 16 (ReLU6), inverted
    residuals 16 (s1, no expansion), 2x 24 (s2), 2x 40 (s2) at expansion 4, 1x1 conv to 64."""
    c = lambda n: make_divisible(n * width)  # noqa: E731
    return SegDec(SegLayers(bits), num_classes, tuple(in_size), c(16), [(c(16), 1, 1), (c(24), 2, 2), (c(40), 2, 2)],
                  avg="trunc", encoder="lite", expand=4, features=c(64))


@register_model(family="efficientnet", fpga_lowerable=True, segmentation=True)
def segdec_lite(num_classes: int, in_size: tuple[int, int], width: float, bits: Optional[Bits]) -> SegDec:
    """SegDec with an EfficientNet-Lite encoder (inverted residuals, depthwise, ReLU6) to 1/8, the same two heads."""
    return create_segdec_lite(num_classes, in_size, width, bits)
