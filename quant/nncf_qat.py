"""INT8 quantization-aware models with NNCF 3.4, for the NPU (OpenVINO) and GPU (TensorRT).

The NNCF 3.4 path (NNCFConfig / create_compressed_model no longer exist):

    q = quantize_int8(float_model, calib_batches, mode="openvino")  # nncf.quantize: PTQ init
    fit(q, ...)                                                      # ordinary torch training = QAT
    save_nncf_checkpoint(path, q, meta)                              # nncf config + state_dict
    q, meta = load_nncf_checkpoint(path, create_model(...))          # exact restore
    export_qdq_onnx(q, example, "model.onnx")                        # QuantizeLinear/DequantizeLinear

Modes:
- "openvino": NNCF's defaults for CPU/NPU: preset PERFORMANCE (symmetric weights and
  activations; the default for CNNs, and the cheapest form on the NPU and CPU), target
  device NPU (which NNCF maps to the CPU rules for 8-bit). Activation quantizers are
  signed or unsigned depending on the data (uint8 after ReLU); depthwise-conv inputs may be
  per-channel. Three deliberate departures, for both modes (see _mode_parameters):
  whole-batch statistics, no fast bias correction, no overflow fix.
- "tensorrt": TensorRT's explicit-quantization layout: int8 everywhere, weights symmetric
  per-channel (narrow range, [-127, 127]), activations symmetric per-tensor and SIGNED.
  NNCF's hardware rules reject `signedness_to_force=True` for activations (they leave every
  activation's sign to the data), so per-tensor/symmetric are set through
  AdvancedQuantizationParameters, and the activation quantizers that calibration made
  unsigned are then switched to signed with their public `signed` setter (same scale:
  range [0, s] becomes [-s, s]; QAT fine-tuning absorbs the lost bit).
"""
from __future__ import annotations

import functools
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import UserError

Mode = Literal["openvino", "tensorrt"]
MODES = ("openvino", "tensorrt")
CHECKPOINT_FORMAT = "qdeploy-nncf-v1"


# --- quantization ---------------------------------------------------------------------


def quantize_int8(
    float_model: nn.Module,
    calib_batches: Iterable[torch.Tensor],
    mode: Mode,
    subset_size: int = 300,
    overflow_fix: bool = False,
) -> nn.Module:
    """Insert INT8 fake quantizers into a copy of `float_model` and calibrate them.

    calib_batches: float tensors [N, 1, H, W] (already `to_input`), used as given until
    `subset_size` images. An activation's range is the mean over batches of each whole
    batch's min/max (batchwise_statistics=False). NNCF's per-image alternative (the mean of
    per-image maxima) clips what only some images have: on the toy test task (half the
    images carry a bright defect) it cut the input range to 0.76 while pixels reach 0.90,
    and the INT8 logits came out ~0.72x the float ones (max |d| 0.65 vs 0.025). So calibrate
    with batches that mix defects and good parts (the shuffled training split does).
    The float model is not modified; the result is in eval mode, ready for an ordinary
    torch training loop (QAT).

    overflow_fix: NNCF's fix for CPUs whose INT8 kernels saturate (no VNNI/AMX: see
    core.machine): every weight gets 7 bits of range, so u8 x s8 pairs can no longer overflow
    int16. Off for an NPU or GPU artifact (they accumulate exactly); on for an artifact that
    is to run on any CPU (npu.device: cpu).
    """
    import nncf

    if mode not in MODES:
        raise UserError(f"unknown INT8 mode {mode!r}: choose one of {', '.join(MODES)}")
    batches = _calibration_batches(calib_batches, subset_size)
    kwargs = _mode_parameters(mode, overflow_fix)
    build_nncf_extension()
    was_training = float_model.training
    float_model.eval()
    try:
        qmodel = nncf.quantize(float_model, nncf.Dataset(batches), subset_size=len(batches), **kwargs)
    finally:
        float_model.train(was_training)
    if mode == "tensorrt":
        make_activations_signed(qmodel)
    return qmodel.eval()


@functools.cache
def build_nncf_extension() -> None:
    """Build (once per machine and torch version) or load NNCF's C++ fake-quantize kernels.

    NNCF otherwise builds them lazily at the model's first forward pass, in a thread it
    abandons after 60 s: on a loaded 2-core machine the build took 160 s and the first
    forward crashed with ExtensionLoaderTimeoutException. This public NNCF call has no time limit;
    afterwards NNCF's lazy load finds the built library at once.
    """
    import nncf.torch
    import nncf.torch.quantization.extensions  # noqa: F401  registers the loader force_build runs

    nncf.torch.force_build_cpu_extensions()


def _calibration_batches(calib_batches: Iterable[torch.Tensor], subset_size: int) -> list[torch.Tensor]:
    if subset_size < 1:
        raise ValueError("subset_size must be positive")
    batches: list[torch.Tensor] = []
    remaining = subset_size
    for batch in calib_batches:
        if not (isinstance(batch, torch.Tensor) and batch.dim() == 4 and batch.is_floating_point()):
            got = f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise TypeError(f"calibration batches must be float tensors [N, C, H, W] (to_input), got {got}")
        if len(batch) == 0:
            continue
        batches.append(batch[:remaining].detach().contiguous())
        remaining -= len(batches[-1])
        if remaining == 0:
            break
    if not batches:
        raise UserError("no calibration images: the training split is empty; check dataset.split and the dataset path")
    return batches


def _mode_parameters(mode: Mode, overflow_fix: bool = False) -> dict:
    import nncf
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    # Batchwise=False: one min/max per whole batch (see quantize_int8). Bias correction off:
    # QAT trains the biases anyway, and on the toy test model NNCF's fast bias correction
    # moved BatchNorm biases by up to 0.05, raising the INT8-vs-float max |d| of the logits
    # (up to 2.05) from 0.025 to 0.18 and flipping 1 of 128 decisions.
    # Overflow fix: NNCF's default halves the first conv's weight range (7 bits) for CPUs
    # without VNNI, whose u8*s8 multiply-adds saturate in int16; saturation can hit any layer,
    # so when asked for it is applied to every layer (ENABLE). NPUs, GPUs and CPUs with
    # VNNI/AMX do not need it (DISABLE), and its doubled scale puts each channel's largest
    # weight exactly on a rounding tie that OpenVINO breaks differently from torch: with only
    # that layer quantized, OpenVINO-vs-torch max |d| was 0.024 on the toy model's logits (~2);
    # 7e-7 without the fix.
    common = {
        "batchwise_statistics": False,
        "disable_bias_correction": True,
        "overflow_fix": OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE,
    }
    if mode == "openvino":
        return {
            "preset": nncf.QuantizationPreset.PERFORMANCE,
            "target_device": nncf.TargetDevice.NPU,
            "advanced_parameters": AdvancedQuantizationParameters(**common),
        }
    sym = QuantizationScheme.SYMMETRIC
    advanced = AdvancedQuantizationParameters(
        **common,
        activations_quantization_params=QuantizationParameters(num_bits=8, mode=sym, per_channel=False),
        weights_quantization_params=QuantizationParameters(num_bits=8, mode=sym, per_channel=True, narrow_range=True),
    )
    return {
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "target_device": nncf.TargetDevice.ANY,
        "advanced_parameters": advanced,
    }


def make_activations_signed(qmodel: nn.Module) -> int:
    """Switch unsigned activation quantizers to signed (scale kept). Returns how many."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    flipped = 0
    for info, module in _quantizers(qmodel):
        if info.kind != "activation":
            continue
        if not isinstance(module, SymmetricQuantizer):
            raise RuntimeError(f"TensorRT mode produced a {type(module).__name__} at {info.name}; expected symmetric")
        if not module.signed:
            module.signed = True  # the setter also recomputes the integer levels
            flipped += 1
    return flipped


@dataclass(frozen=True)
class QuantizerInfo:
    """One fake quantizer NNCF inserted: where, and in which integer format."""

    name: str  # NNCF hook name, e.g. "pre_hooks.layers/0/conv1/conv2d/0__1.0"
    op: str  # the op it feeds (weights) or follows (activations), e.g. "layers/0/conv1/conv2d/0"
    kind: Literal["weight", "activation"]
    symmetric: bool
    signed: bool
    per_channel: bool
    narrow_range: bool
    num_bits: int
    level_low: int
    level_high: int


def quantizer_summary(qmodel: nn.Module) -> list[QuantizerInfo]:
    """The integer format of every quantizer in an NNCF model (for tests and reports)."""
    return [info for info, _ in _quantizers(qmodel)]


def _quantizers(qmodel: nn.Module):
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer, SymmetricQuantizer

    for name, module in get_hook_storage(qmodel).named_hooks():
        if not isinstance(module, BaseQuantizer):
            continue
        hook_type, op, _ = decode_hook_name(name)
        # NNCF creates weight quantizers (pre-hooks on the op's weight port) with a forced
        # sign (q8_w_sym: signedness_to_force=True); its hardware rules give activation
        # quantizers no forced sign (the data decides), so that spec tells them apart.
        is_weight = hook_type == "pre_hooks" and module.get_config().get("signedness_to_force") is True
        info = QuantizerInfo(
            name=name,
            op=op,
            kind="weight" if is_weight else "activation",
            symmetric=isinstance(module, SymmetricQuantizer),
            signed=bool(module.signed),
            per_channel=bool(module.per_channel),
            narrow_range=bool(module.narrow_range),
            num_bits=int(module.num_bits),
            level_low=int(module.level_low),
            level_high=int(module.level_high),
        )
        yield info, module


def head_input_step(qmodel: nn.Module, example_input: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(quantization step of the activation that feeds the model's last Linear, that Linear's
    weight [C, F]): what `reference.compare.one_step_bound` needs.

    The feeding quantizer is found by running `example_input` and taking the last activation
    quantizer called before the last Linear (NNCF quantizes a Linear's input right before it).
    Step = scale / level_high for NNCF's symmetric quantizers (signed: [-s*128/127, s] in 255
    steps; unsigned: [0, s] in 255 steps).
    """
    from nncf.torch.quantization.layers import SymmetricQuantizer

    linears = [m for m in qmodel.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no Linear head")
    head, seen, handles = linears[-1], {}, []
    activations = [m for info, m in _quantizers(qmodel) if info.kind == "activation"]
    for q in activations:
        handles.append(q.register_forward_hook(lambda mod, _i, _o: seen.update(last=mod)))
    handles.append(head.register_forward_pre_hook(lambda _m, _i: seen.update(head_input=seen.get("last"))))
    try:
        with torch.no_grad():
            qmodel(example_input[:1])
    finally:
        for h in handles:
            h.remove()
    q = seen.get("head_input")
    if not isinstance(q, SymmetricQuantizer) or q.per_channel:
        raise ValueError("the head's input is not quantized per tensor by a symmetric NNCF quantizer")
    return float(q.scale.detach().abs().max()) / float(q.level_high), head.weight.detach().clone()


# --- checkpoints -------------------------------------------------------------------------


def save_nncf_checkpoint(path: str | Path, qmodel: nn.Module, meta: dict) -> Path:
    """One file: NNCF's quantizer placement (JSON), the state_dict (tensors) and `meta` (JSON).

    Loadable with torch.load(weights_only=True): the config and meta are JSON strings.
    """
    import nncf.torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "nncf_config": json.dumps(nncf.torch.get_config(qmodel)),
        "meta": json.dumps(meta),
        "state_dict": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()},
    }
    from quant.checkpoint import save_tensors

    with atomic_path(path) as tmp:
        save_tensors(payload, tmp, Path(path))
    return Path(path)


def load_nncf_checkpoint(path: str | Path, fresh_float_model: nn.Module) -> tuple[nn.Module, dict]:
    """Rebuild the quantized model from a freshly created float model of the same architecture."""
    import nncf.torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"NNCF checkpoint {path} not found: run the NPU/GPU QAT step first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: a truncated or foreign file
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}): delete it and rebuild") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a qdeploy NNCF checkpoint ({CHECKPOINT_FORMAT}): delete it and rebuild")
    build_nncf_extension()
    qmodel = nncf.torch.load_from_config(fresh_float_model, json.loads(payload["nncf_config"]))
    try:
        qmodel.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(
            f"{path} does not match the model it is loaded into ({first}); check model.name and model.width"
        ) from None
    return qmodel.eval(), json.loads(payload["meta"])


# --- ONNX with standard Q/DQ ------------------------------------------------------------


def export_qdq_onnx(qmodel: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """ONNX with QuantizeLinear/DequantizeLinear (input "input", output "logits", dynamic batch).

    nncf.strip turns NNCF's quantizers into torch FakeQuantize modules (weights pre-rounded
    to their narrow range), which the TorchScript exporter writes as standard Q/DQ pairs.
    `qmodel` itself is not modified.
    """
    import nncf
    import onnx

    _import_strip_quietly()
    stripped = _strip_shared_too(nncf.strip(qmodel, do_copy=True, example_input=example_input).eval())
    with atomic_path(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # quantizer levels become constants
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate (Q/DQ export)
            torch.onnx.export(
                stripped,
                (example_input,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        graph = onnx.load(str(tmp)).graph
        custom = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
        if custom or not any(n.op_type == "QuantizeLinear" for n in graph.node):
            raise RuntimeError(f"NNCF export did not produce a standard Q/DQ graph (custom ops: {custom})")
    return Path(path)


def _strip_shared_too(stripped: nn.Module) -> nn.Module:
    """nncf.strip replaces each quantizer at the first hook that holds it (named_hooks drops
    duplicates), so a quantizer shared by several consumers (a feature map read by a conv and
    by the pools of a decision head) stays an NNCF module there and exports as OpenVINO's
    FakeQuantize: convert those too, the same way."""
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer
    from nncf.torch.quantization.strip import convert_to_torch_fakequantizer

    storage = get_hook_storage(stripped)
    converted: dict[int, nn.Module] = {}
    for name, module in list(storage.named_hooks(remove_duplicate=False)):
        if isinstance(module, BaseQuantizer):
            if id(module) not in converted:
                converted[id(module)] = convert_to_torch_fakequantizer(module)
            storage.set_submodule(name, converted[id(module)])
    return stripped


def _import_strip_quietly() -> None:
    """nncf.strip imports torchao, which logs that its CUDA kernels do not load on a CPU-only
    torch and that torch deprecates one of its registrations: noise for our users."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import nncf.torch.quantization.strip  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
