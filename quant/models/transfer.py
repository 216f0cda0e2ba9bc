"""Float pre-training -> QAT: initialise a Brevitas model from its float twin's weights.

The twin shares every float tensor's key (conv/linear `weight`, all BatchNorm tensors),
because both are built from the same model code (quant/models/layers.py). What the float
model lacks are the quantizers' scale parameters (`...act_quant...scaling_impl.value`); they
stay missing here and Brevitas initialises them from the activation statistics of the first
training batches (layers.STATS_STEPS), which is what QAT fine-tuning wants. The input
quantizer's scale is a constant and weight scales come from the weights: neither is a key.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UserError

_QUANTIZER_MARKERS = (".act_quant.", ".weight_quant.", ".input_quant.", ".output_quant.", ".trunc_quant.")


@dataclass(frozen=True)
class TransferReport:
    loaded: tuple[str, ...]  # keys copied from the float model
    quantizer_keys: tuple[str, ...]  # quantizer parameters left to their statistics-based init


def is_quantizer_key(key: str) -> bool:
    return any(m in f".{key}" for m in _QUANTIZER_MARKERS)


def load_float_weights(qat_model: nn.Module, float_state: dict[str, torch.Tensor] | nn.Module) -> TransferReport:
    """Copy a float twin's weights into `qat_model`; any other mismatch is an error."""
    if isinstance(float_state, nn.Module):
        float_state = float_state.state_dict()
    own = qat_model.state_dict()
    unexpected = sorted(k for k in float_state if k not in own)
    wrong_shape = sorted(k for k in float_state if k in own and own[k].shape != float_state[k].shape)
    if unexpected or wrong_shape:
        key = (unexpected or wrong_shape)[0]
        what = "is not in" if unexpected else f"has shape {tuple(float_state[key].shape)} vs {tuple(own[key].shape)} in"
        raise UserError(f"float checkpoint key {key} {what} the QAT model ({len(unexpected)} unknown, "
                        f"{len(wrong_shape)} mis-shaped keys): build both with the same model name, "
                        f"width and num_classes")
    result = qat_model.load_state_dict(float_state, strict=False)
    float_missing = sorted(k for k in result.missing_keys if not is_quantizer_key(k))
    if float_missing:
        raise UserError(f"float checkpoint lacks {len(float_missing)} weights of the QAT model, e.g. "
                        f"{float_missing[0]}: was it saved from the same model name?")
    quantizer = tuple(sorted(k for k in result.missing_keys if is_quantizer_key(k)))
    return TransferReport(loaded=tuple(sorted(float_state)), quantizer_keys=quantizer)

