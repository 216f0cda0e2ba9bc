"""The model registry: small decorated entrypoints, one `create_model` (timm-style).

    >>> from quant.models import create_model, list_models, model_info
    >>> model = create_model("resnet8", num_classes=2, in_size=(64, 64))   # Brevitas W4A4, 8-bit input
    >>> baseline = create_model("resnet8", 2, (64, 64), quantized=False)  # its float twin
    >>> list_models("effnet*")
    ['effnet_b0', 'effnet_lite']

An entrypoint is `fn(num_classes, in_size, width, bits) -> nn.Module`, where bits is a
`Bits` for the Brevitas model and None for the float twin. Its docstring's first line is
the model's description.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from torch import nn

from core.errors import UserError
from quant.models.layers import WEIGHT_SCALES, Bits


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "resnet" | "efficientnet"
    fpga_lowerable: bool  # the quantized model lowers fully through FINN
    int8_only: bool  # no Brevitas variant: quantized only by NNCF, to INT8 (NPU/GPU)
    description: str
    segmentation: bool = False  # two outputs: decision logits [N, C] and a defect-logit map [N, 1, h, w]


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(family: str, fpga_lowerable: bool, int8_only: bool = False, segmentation: bool = False):
    """Decorator registering an entrypoint under its function name."""

    def wrap(fn):
        name = fn.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name} registered twice")
        description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _ENTRYPOINTS[name] = fn
        _INFO[name] = ModelInfo(name, family, fpga_lowerable, int8_only, description, segmentation)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _ENTRYPOINTS if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    _check_name(name)
    return _INFO[name]


def create_model(name: str, num_classes: int, in_size: tuple[int, int] = (64, 64), width: float = 1.0,
                 weight_bits: int = 4, act_bits: int = 4, input_bits: int = 8,
                 quantized: bool = True, edge_weight_bits: int | None = None, weight_scale: str = "max") -> nn.Module:
    """Build a model: input float [N,1,H,W] in [0,1], output float logits [N,num_classes].

    The returned module carries `create_args` (this call's arguments, JSON-serialisable) so a
    checkpoint can rebuild it.
    """
    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"model {name}: num_classes must be an integer >= 2, got {num_classes!r}")
    in_size = _check_size(name, in_size)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise UserError(f"model {name}: width must be a number in (0, 4], got {width!r}")
    checked = (("weight_bits", weight_bits), ("act_bits", act_bits), ("input_bits", input_bits))
    for key, value in checked + ((("edge_weight_bits", edge_weight_bits),) if edge_weight_bits is not None else ()):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
            raise UserError(f"model {name}: {key} must be an integer from 2 to 8 (2, 3, ..., 8), got {value!r}")
    if weight_scale not in WEIGHT_SCALES:
        raise UserError(f"model {name}: weight_scale must be one of {', '.join(WEIGHT_SCALES)}, got {weight_scale!r}")
    info = _INFO[name]
    if quantized and info.int8_only:
        raise UserError(f"{name} uses SiLU and squeeze-excite, which FINN cannot lower; use it for targets "
                        f"npu/gpu (INT8 via NNCF) or choose {'|'.join(list_fpga_models())} for fpga")
    bits = Bits(weight_bits, act_bits, input_bits, edge_weight_bits, weight_scale) if quantized else None
    model = _ENTRYPOINTS[name](num_classes, in_size, float(width), bits)
    model.create_args = dict(name=name, num_classes=num_classes, in_size=list(in_size), width=float(width),
                             weight_bits=weight_bits, act_bits=act_bits, input_bits=input_bits,
                             quantized=bool(quantized), edge_weight_bits=edge_weight_bits)
    if weight_scale != "max":  # checkpoints of the default keep their arguments
        model.create_args["weight_scale"] = weight_scale
    return model


def check_fpga(model: nn.Module) -> None:
    """Raise UserError unless FINN can lower this model as built (name, quantization).

    Non-square inputs lower too: compilers/finn/custom_ops.py lowers the global
    TruncAvgPool2d over a non-square final map (finn-plus itself pools only square ones).
    """
    args = model.create_args
    name = args["name"]
    if not _INFO[name].fpga_lowerable:
        raise UserError(f"model {name} cannot be lowered by FINN: choose {'|'.join(list_fpga_models())} for fpga")
    if not args["quantized"]:
        raise UserError(f"model {name} is the float twin; the fpga target needs quantized=True (Brevitas QAT)")
    h, w = args["in_size"]
    for layer, (ih, iw), k in _conv_inputs(model, (h, w)):
        if (ih == 1 and k[0] > 1) or (iw == 1 and k[1] > 1):
            raise UserError(f"model {name}: dataset.size {h}x{w} leaves a {ih}x{iw} map at the {k[0]}x{k[1]} conv "
                            f"'{layer}' [conv-1d-map]: FINN cannot lower a kernel across a size-1 axis; use a larger "
                            f"dataset.size for fpga")


def _conv_inputs(model: nn.Module, in_size: tuple[int, int]):
    """[(layer name, input (h, w), kernel)] of every Conv2d, from one forward pass of zeros."""
    import copy

    import torch

    twin = copy.deepcopy(model).eval()
    rows, hooks = [], []
    for name, mod in twin.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: rows.append((name, tuple(i[0].shape[2:]), tuple(m.kernel_size)))))
    try:
        with torch.no_grad():
            twin(torch.zeros(1, 1, *in_size))
    finally:
        for hk in hooks:
            hk.remove()
    return rows


def list_fpga_models() -> list[str]:
    return [n for n in list_models() if _INFO[n].fpga_lowerable]


def _check_name(name: str) -> None:
    if name not in _ENTRYPOINTS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")


def _check_size(name: str, in_size) -> tuple[int, int]:
    ok = (isinstance(in_size, (tuple, list)) and len(in_size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in in_size))
    if not ok:
        raise UserError(f"model {name}: in_size must be (height, width), two integers >= 8, got {in_size!r}")
    return (int(in_size[0]), int(in_size[1]))
