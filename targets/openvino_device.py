"""Which OpenVINO device runs the model, said out loud.

Policy: "npu" means the NPU or an error; "auto" means the NPU when OpenVINO lists one,
else the CPU with one console line saying so; "cpu" means the CPU. Never the AUTO: or
MULTI: virtual devices: on a machine without an NPU they silently run on the CPU. After
compiling, the device OpenVINO actually used (EXECUTION_DEVICES) and the inference
precision are read back and recorded.

Precision: "f32" sets INFERENCE_PRECISION_HINT=f32 on the CPU, which otherwise runs FP32
parts of a model in bf16 where the CPU has it (needed for exact parity with torch).
The NPU chooses its own precision (FP16 for float parts, INT8 where quantized), so no hint
is sent to it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from core.errors import UserError

Requested = Literal["auto", "npu", "cpu"]
PrecisionHint = Literal["f32", "default"]
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]


@dataclass(frozen=True)
class DeviceChoice:
    requested: str  # what the recipe asked for: auto | npu | cpu
    device: str  # the OpenVINO device name compiled for: "NPU" or "CPU"
    available: tuple[str, ...]  # core.available_devices at selection time
    fallback_reason: Optional[str] = None  # why it is not the NPU, when auto fell back
    execution_devices: tuple[str, ...] = ()  # read back after compile
    inference_precision: Optional[str] = None  # read back after compile, e.g. "f32", "bf16"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def select_device(requested: Requested, core=None, console=None, what: str = "the INT8 IR") -> DeviceChoice:
    """Pick the device for `requested`; log a fallback once, raise UserError for a missing NPU."""
    if requested not in ("auto", "npu", "cpu"):
        raise UserError(f"npu.device: unknown device {requested!r}: choose auto, npu or cpu")
    if core is None:
        import openvino as ov

        core = ov.Core()
    available = tuple(core.available_devices)
    has_npu = any(d == "NPU" or d.startswith("NPU.") for d in available)
    if requested == "cpu":
        return DeviceChoice(requested, "CPU", available)
    if has_npu:
        return DeviceChoice(requested, "NPU", available)
    if requested == "npu":
        raise UserError(
            f"NPU requested but OpenVINO lists no NPU device (available: {list(available)}); "
            "install the Intel NPU driver or use npu.device: cpu"
        )
    reason = f"NPU not found (available: {list(available)})"
    _console(console).print(f"{reason}; running {what} on CPU")
    return DeviceChoice(requested, "CPU", available, fallback_reason=reason)


def compile_model(
    core,
    model,
    choice: DeviceChoice,
    precision_hint: PrecisionHint = "f32",
    performance_hint: PerformanceHint = "LATENCY",
    console=None,
    what: str = "the INT8 IR",
):
    """Compile `model` (ov.Model or IR path) for `choice`.

    Returns (compiled_model, choice with execution_devices and inference_precision filled).
    With device "auto", an NPU that is listed but fails to compile falls back to the CPU
    with a console line; with "npu" that failure is a UserError.
    """
    try:
        compiled = core.compile_model(model, choice.device, _config(choice.device, precision_hint, performance_hint))
    except RuntimeError as e:
        if choice.device != "NPU":
            raise
        reason = f"NPU compile failed ({_ov_error_summary(e)})"
        if choice.requested == "npu":
            raise UserError(f"{reason}; update the Intel NPU driver or use npu.device: cpu") from None
        _console(console).print(f"{reason}; running {what} on CPU")
        choice = dataclasses.replace(choice, device="CPU", fallback_reason=reason)
        compiled = core.compile_model(model, "CPU", _config("CPU", precision_hint, performance_hint))
    return compiled, dataclasses.replace(
        choice,
        execution_devices=tuple(compiled.get_property("EXECUTION_DEVICES")),
        inference_precision=_read_precision(compiled),
    )


def _config(device: str, precision_hint: PrecisionHint, performance_hint: PerformanceHint) -> dict:
    if precision_hint not in ("f32", "default"):
        raise UserError(f"npu.precision_hint: unknown value {precision_hint!r}: choose f32 or default")
    config = {"PERFORMANCE_HINT": performance_hint}
    if device == "CPU" and precision_hint == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def _read_precision(compiled) -> Optional[str]:
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:  # not every plugin reports it
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _ov_error_summary(error: Exception, limit: int = 200) -> str:
    """OpenVINO errors start with lines of 'Exception from src/...': keep the message."""
    lines = [ln.strip() for ln in str(error).splitlines()]
    useful = [ln for ln in lines if ln and not ln.startswith("Exception from ")]
    text = " ".join(useful) or (lines[0] if lines else type(error).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cpu_int8_kernels_faithful(ident: dict, overflow_fix: bool) -> bool:
    """Do this CPU's INT8 kernels compute what the IR means (and what an NPU computes)?

    Yes with VNNI/AMX (exact int32 accumulation) or when the IR was quantized with NNCF's
    overflow fix (7-bit weights: u8 x s8 pairs cannot saturate int16). Otherwise the CPU is
    no faithful stand-in: check the IR with `OpenVINORunner(..., int8_kernels=False)`.
    `ident` is core.machine.identity().
    """
    from core.machine import int8_accumulates_exactly

    return overflow_fix or int8_accumulates_exactly(ident)
