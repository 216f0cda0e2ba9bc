"""OpenVINO IR (model.xml + model.bin) from a torch model: NNCF INT8 or plain FP32.

An NNCF-quantized model converts to an INT8 IR (FakeQuantize nodes, int8 weight
constants, BatchNorm folded); a float model gives the FP32 baseline IR. The input shape
is static, batch 1 (the NPU compiles static shapes only); runners reshape to their batch
at load time. Weights stay FP32 in the file (compress_to_fp16=False).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def to_openvino_ir(model: nn.Module, in_shape: tuple[int, int, int, int], out_xml: str | Path) -> Path:
    """Convert `model` at static `in_shape` (1, C, H, W) and write out_xml + its .bin."""
    import openvino as ov

    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) != 4 or in_shape[0] != 1 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be a static (1, C, H, W), got {in_shape}")
    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise ValueError(f"out_xml must end in .xml, got {out_xml}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # NNCF quantizers read their integer levels as Python numbers while traced: constants
            # of the exported graph, which is what we want; the tracer warns about each.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ov_model = ov.convert_model(model, example_input=torch.zeros(in_shape), input=[in_shape])
    finally:
        model.train(was_training)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    _save_pair(ov_model, out_xml)
    return out_xml


def _save_pair(ov_model, out_xml: Path) -> None:
    """Write xml + bin in a temp dir beside the target, then move both in.

    The old xml is removed first and the new xml moved last, so an interrupted write leaves
    no xml (the step reruns) rather than an xml paired with the wrong bin.
    """
    import openvino as ov

    try:
        out_xml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out_xml.parent}: {e.strerror}") from None
    out_bin = out_xml.with_suffix(".bin")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_xml.stem}.", dir=out_xml.parent))
    try:
        tmp_xml = tmp_dir / out_xml.name
        ov.save_model(ov_model, tmp_xml, compress_to_fp16=False)
        out_xml.unlink(missing_ok=True)
        os.replace(tmp_xml.with_suffix(".bin"), out_bin)
        os.replace(tmp_xml, out_xml)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@dataclass(frozen=True)
class IrInfo:
    """What an IR holds, for reports and checks."""

    input_shape: tuple[int, ...]
    fake_quantize: int  # number of FakeQuantize nodes (0: a float IR)
    int8_constants: int  # weight constants stored as int8/uint8
    xml_bytes: int
    bin_bytes: int

    @property
    def is_int8(self) -> bool:
        return self.fake_quantize > 0


def describe_ir(xml: str | Path) -> IrInfo:
    import openvino as ov

    xml = Path(xml)
    model = ov.Core().read_model(xml)
    ops = model.get_ops()
    shape = model.inputs[0].get_partial_shape()
    return IrInfo(
        input_shape=tuple(d.get_length() if d.is_static else -1 for d in shape),
        fake_quantize=sum(op.get_type_name() == "FakeQuantize" for op in ops),
        int8_constants=sum(
            op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8")
            for op in ops
        ),
        xml_bytes=xml.stat().st_size,
        bin_bytes=xml.with_suffix(".bin").stat().st_size,
    )
