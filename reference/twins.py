"""Every model of a recipe, run on the same test set: the golden float model, the QAT
models, and each deployed artifact that was built (its "twin").

A twin is run fresh from its artifact (never from logits saved by the build), so a
tampered or broken artifact shows up in the parity report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qdeploy.build.common import splits, test_pixels
from qdeploy.errors import UserError
from qdeploy.steps import Context


@dataclass
class Twin:
    key: str
    label: str
    role: str  # golden | qat | target
    logits: np.ndarray
    threshold: float | None
    runtime: str
    device: str = "cpu"
    precision: str = "fp32"
    target: str | None = None
    reference: str | None = None
    extra: dict = field(default_factory=dict)


def golden(ctx: Context) -> list[Twin]:
    from quant.checkpoint import load_checkpoint
    from quant.train import predict

    d = ctx.stage_dir("train")
    if not (d / "qat.json").is_file():
        raise UserError(f"no trained model in {d}: run 'make train' (or any build) first")
    test = splits(ctx).test
    r = ctx.recipe
    out = []
    for key, label, precision in (("float", "float (golden)", "fp32"),
                                  ("qat", f"Brevitas QAT W{r.model.weight_bits}A{r.model.act_bits}",
                                   f"w{r.model.weight_bits}a{r.model.act_bits} fake-quant")):
        model, meta = load_checkpoint(d / key)
        out.append(Twin(key, label, "golden" if key == "float" else "qat", predict(model, test), meta.get("threshold"),
                        "pytorch", "cpu", precision, target="fpga" if key == "qat" else None))
    return out


def npu(ctx: Context) -> list[Twin]:
    from qdeploy.build.int8 import load_int8
    from quant.train import predict
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner

    r = ctx.recipe
    qmodel, meta = load_int8(ctx, "npu")
    ref = Twin("npu_qat", "NNCF INT8 QAT (OpenVINO layout)", "qat", predict(qmodel, splits(ctx).test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="npu")
    runner = OpenVINORunner(ctx.stage_dir("npu") / "model.xml", select_device(r.npu.device),
                            precision_hint=r.npu.precision_hint, batch=1)
    info = runner.describe()
    extra = {"requested_device": r.npu.device, "execution_devices": info.get("execution_devices"),
             "fallback_reason": info.get("fallback_reason"), "inference_precision": info.get("inference_precision"),
             "precision_hint": r.npu.precision_hint, "artifact": str(ctx.stage_dir("npu") / "model.xml")}
    if info.get("fallback_reason"):
        extra["note"] = f"{info['fallback_reason']}: the IR ran on {runner.device}"
    twin = Twin("npu", "NPU target: OpenVINO INT8 IR", "target", runner.predict(test_pixels(ctx)), meta["threshold"],
                "openvino", runner.device, runner.precision, "npu", "npu_qat", extra)
    return [ref, twin]


def gpu(ctx: Context) -> list[Twin]:
    import json

    from qdeploy.build.int8 import load_int8
    from quant.train import predict
    from targets.runners import OrtRunner

    qmodel, meta = load_int8(ctx, "gpu")
    d = ctx.stage_dir("gpu")
    ref = Twin("gpu_qat", "NNCF INT8 QAT (TensorRT layout)", "qat", predict(qmodel, splits(ctx).test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="gpu")
    runner = OrtRunner(d / "model.qdq.onnx")
    engine = d / "engine.json"
    note = "TensorRT engine not built here; the QDQ ONNX ran on onnxruntime (CPU) as the reference"
    if engine.is_file():
        e = json.loads(engine.read_text())
        if e.get("engine") is None:
            note = f"TensorRT engine not built ({e.get('skipped')}); the QDQ ONNX ran on onnxruntime (CPU)"
    twin = Twin("gpu", "GPU target: QDQ ONNX on onnxruntime", "target", runner.predict(test_pixels(ctx)),
                meta["threshold"], "onnxruntime", "cpu", "int8 QDQ", "gpu", "gpu_qat",
                {"note": note, "artifact": str(d / "model.qdq.onnx")})
    return [ref, twin]


def fpga(ctx: Context) -> list[Twin]:
    from compilers.finn.twin import run_dataflow_twin

    d = ctx.stage_dir("fpga")
    logits, extra = run_dataflow_twin(d, test_pixels(ctx))
    threshold = next((t.threshold for t in golden_cache(ctx) if t.key == "qat"), None)
    return [Twin("fpga", "FPGA target: FINN dataflow (python execution)", "target", logits, threshold,
                 "finn python exec", "cpu (bit-accurate model of the FPGA)", extra.pop("precision", "integer"),
                 "fpga", "qat", extra)]


def golden_cache(ctx: Context) -> list[Twin]:
    if "golden_twins" not in ctx.values:
        ctx.values["golden_twins"] = golden(ctx)
    return ctx.values["golden_twins"]


TARGETS = {"fpga": fpga, "npu": npu, "gpu": gpu}


def built_targets(ctx: Context) -> list[str]:
    """Targets whose build stage finished (stage.json is written last)."""
    return [t for t in TARGETS if (ctx.stage_dir(t) / "stage.json").is_file()]
