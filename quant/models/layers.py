"""Quantizers and one layer factory that builds either the Brevitas QAT layer or its float twin.

Every model is written once against `Layers`; `Layers(bits)` returns Brevitas layers,
`Layers(None)` the plain torch twin. Module names are the model's, so both variants share
state_dict keys for every float tensor (conv/linear weights, BatchNorm); the quantized
variant adds only quantizer scale parameters (see quant/models/transfer.py).

Quantizers (why these, for FINN):
- Input: `PixelInputQuant`, unsigned, *constant* scale 1/(2^b - 1). At input_bits=8 that is
  exactly 1/255, so the quantizer is the identity on every `pixels * float32(1/255)` input and
  the FPGA graph (uint8 pixels -> Mul(1/255) -> this Quant) sees the same integers as training.
  Below 8 bits it maps [0, 1] onto 2^b - 1 steps (a coarser, still fixed, pixel grid).
- Weights: `WeightQuant`, signed narrow-range (symmetric, -(2^(b-1)-1)..2^(b-1)-1), scale per
  output channel from the max |w| of that channel (no learned parameter); with
  `weight_scale="learned"` (`LearnedWeightQuant`) that scale is the starting value of a
  trained one. Per-channel is what 4-bit depthwise convolutions need, and FINN lowers it:
  every conv in these models is followed by BatchNorm and a quantizer, so streamlining folds
  the per-channel scale into that layer's per-channel thresholds; the head's per-channel
  scale becomes the final Mul.
- Activations: `ReluQuant` (unsigned) and `SignedQuant` (signed), per-tensor, scale learned
  after being initialised from the 99.999th percentile of the first `STATS_STEPS` training
  batches. `Relu6Quant` is the learned-clip ReLU6 of effnet_lite: unsigned, per-tensor, scale
  a parameter initialised so the clip starts at 6.
- Global pool: `TruncAvgPool2d(trunc_quant=TruncTo8bit)` (floor; FINN rejects RoundTo8bit),
  its output width capped by `pool_bits`. finn-plus lowers it only for a square final
  feature map; compilers/finn/custom_ops.py lowers the non-square one (kernel (h, w)).

Channel counts are `make_divisible(channels * width)`: the nearest multiple of 4 (at least 4),
so FINN can fold PE/SIMD by 2 or 4 at any width while width=0.25 still gives 4-channel stems.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

from torch import nn

STATS_STEPS = 32  # training batches used to initialise activation scales (Brevitas default: 300)


@functools.lru_cache(maxsize=None)
def _brevitas():
    # Imported lazily: the float twins (and effnet_b0) must not pay for Brevitas.
    import brevitas.nn as qnn
    from brevitas.core.scaling import ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, TruncTo8bit
    from brevitas.quant import Uint8ActPerTensorFloat, Uint8ActPerTensorFloatMaxInit

    class PixelInputQuant(Uint8ActPerTensorFloat):
        """Unsigned input quantizer with the fixed scale 1/(2^bits - 1) (1/255 at 8 bits)."""

        scaling_impl_type = ScalingImplType.CONST
        min_val = 0.0
        max_val = 1.0

    class WeightQuant(Int8WeightPerChannelFloat):
        """Signed narrow-range weights, per-output-channel max scale."""

    class LearnedWeightQuant(WeightQuant):
        """The same, the per-channel scale a parameter initialised from that max at the first
        forward pass (after the float weights are loaded) and then trained (LSQ-style)."""

        scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS

    class ReluQuant(Uint8ActPerTensorFloat):
        collect_stats_steps = STATS_STEPS

    class SignedQuant(Int8ActPerTensorFloat):
        collect_stats_steps = STATS_STEPS

    class Relu6Quant(Uint8ActPerTensorFloatMaxInit):
        max_val = 6.0

    return qnn, dict(input=PixelInputQuant, weight=WeightQuant, learned_weight=LearnedWeightQuant,
                     relu=ReluQuant, signed=SignedQuant, relu6=Relu6Quant, trunc=TruncTo8bit)


@dataclass(frozen=True)
class Bits:
    weight: int
    act: int
    input: int
    edge_weight: Optional[int] = None  # the first conv's and the classifier's weights; None: `weight`
    weight_scale: str = "max"  # WEIGHT_SCALES: "max" (from max |w| per channel) or "learned" (trained from it)


WEIGHT_SCALES = ("max", "learned")


class Layers:
    """Builds each layer quantized (bits given) or float (bits=None), with one call site per layer."""

    def __init__(self, bits: Optional[Bits]):
        self.bits = bits
        if bits is not None:
            self._qnn, self._q = _brevitas()

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def input_quant(self) -> nn.Module:
        if not self.quantized:
            return nn.Identity()
        return self._qnn.QuantIdentity(act_quant=self._q["input"], bit_width=self.bits.input,
                                       return_quant_tensor=True)

    @property
    def _weight_quant(self):
        return self._q["learned_weight" if self.bits.weight_scale == "learned" else "weight"]

    def _weight_bits(self, edge: bool) -> int:
        return self.bits.edge_weight or self.bits.weight if edge else self.bits.weight

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, edge: bool = False) -> nn.Module:
        """edge: the network's first layer (its weights take Bits.edge_weight, as FINN's and
        the QAT literature's models keep the first and last layers at 8 bits)."""
        pad = kernel // 2
        if not self.quantized:
            return nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        return self._qnn.QuantConv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False,
                                     weight_quant=self._weight_quant, weight_bit_width=self._weight_bits(edge),
                                     return_quant_tensor=True)

    def relu(self) -> nn.Module:
        if not self.quantized:
            return nn.ReLU()
        return self._qnn.QuantReLU(act_quant=self._q["relu"], bit_width=self.bits.act,
                                   return_quant_tensor=True)

    def relu6(self) -> nn.Module:
        if not self.quantized:
            return nn.ReLU6()
        return self._qnn.QuantReLU(act_quant=self._q["relu6"], bit_width=self.bits.act,
                                   return_quant_tensor=True)

    def signed_quant(self) -> nn.Module:
        """A signed activation quantizer (linear bottleneck, residual operands); float: identity."""
        if not self.quantized:
            return nn.Identity()
        return self._qnn.QuantIdentity(act_quant=self._q["signed"], bit_width=self.bits.act,
                                       return_quant_tensor=True)

    def global_pool(self, size: tuple[int, int], in_bits: int | None = None) -> nn.Module:
        """Average over the whole (h, w) feature map of in_bits values (default: the unsigned
        act_bits activations) -> [N, C, 1, 1]."""
        if not self.quantized:
            return nn.AdaptiveAvgPool2d(1)
        bits = pool_bits(in_bits or self.bits.act, size)
        return self._qnn.TruncAvgPool2d(kernel_size=size, stride=size, trunc_quant=self._q["trunc"],
                                        bit_width=bits, return_quant_tensor=True)

    def linear(self, cin: int, cout: int, edge: bool = True) -> nn.Module:
        """The classifier (edge: its weights take Bits.edge_weight)."""
        if not self.quantized:
            return nn.Linear(cin, cout, bias=False)
        return self._qnn.QuantLinear(cin, cout, bias=False, weight_quant=self._weight_quant,
                                     weight_bit_width=self._weight_bits(edge), return_quant_tensor=False)


def pool_bits(act_bits: int, size: tuple[int, int]) -> int:
    """Bits of the pooled output: the window sum's width, capped at 8.

    Brevitas keeps the top 8 bits of the sum of h*w unsigned act_bits values. When the sum
    needs fewer than 8 bits (e.g. 4-bit activations over 2x2) Brevitas would shift it left,
    which FINN's QuantAvgPool2d does not do (it clamps the shift at 0 and is 2^k off):
    keeping the sum's own width makes the pool exact in both.
    """
    sum_max = (2**act_bits - 1) * size[0] * size[1]
    return min(8, (sum_max - 1).bit_length())


def conv_out(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Spatial size after a conv with kernel k, padding k//2 and this stride (odd k, or k=1)."""
    return tuple(-(-s // stride) for s in size)


def make_divisible(value: float, divisor: int = 4) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never below it nor >10% down."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if out < 0.9 * value:
        out += divisor
    return out

