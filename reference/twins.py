"""Every model of a recipe, run on the same test set: the golden float model, the QAT
models, and each deployed artifact that was built (its "twin").

A twin is run fresh from its artifact (never from logits saved by the build), so a
tampered or broken artifact shows up in the parity report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from reference.inputs import Inputs


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
    maps: np.ndarray | None = None  # a localising model's defect-logit maps [N, 1, h, w]


def golden(ctx: Inputs) -> list[Twin]:
    from quant.checkpoint import load_checkpoint
    from quant.models import model_info
    from quant.train import predict
    from quant.train_seg import predict_maps

    d = ctx.stage_dir("train")
    if not ctx.layout.finished("train"):
        raise UserError(f"no trained model in {d}: run 'make train' (or any build) first")
    test = ctx.splits().test
    r = ctx.recipe
    out = []
    for key, label, precision in (("float", "float (golden)", "fp32"),
                                  ("qat", f"Brevitas QAT W{r.model.weight_bits}A{r.model.act_bits}",
                                   f"w{r.model.weight_bits}a{r.model.act_bits} fake-quant (fp64)")):
        if not (d / f"{key}.json").is_file():
            continue  # INT8-only models have no Brevitas QAT model
        model, meta = load_checkpoint(d / key)
        # the QAT model is the FPGA's reference: evaluated in float64, its exact semantics
        # (float32 rounds some activations that sit on a rounding boundary either way)
        maps = None
        if model_info(r.model.name).segmentation:
            logits, maps = predict_maps(model, test, float64=key == "qat")
        else:
            logits = predict(model, test, float64=key == "qat")
        out.append(Twin(key, label, "golden" if key == "float" else "qat", logits, meta.get("threshold"),
                        "pytorch", "cpu", precision, target="fpga" if key == "qat" else None, maps=maps))
    return out


def _int8_kind(section) -> str:
    return "QAT" if section.qat_epochs else "post-training"


def _one_step_bound(qmodel, pixels) -> float | None:
    """The largest logit difference two exact INT8 executions may show (core.compare)."""
    import torch

    from core.compare import one_step_bound
    from quant.nncf_qat import head_input_step
    from quant.preprocess import to_input

    try:
        step, weight = head_input_step(qmodel, to_input(torch.from_numpy(pixels[:1])))
    except ValueError:
        return None
    return one_step_bound(step, weight.numpy())


def npu(ctx: Inputs) -> list[Twin]:
    """The OpenVINO IR on the device OpenVINO picks.

    On the NPU, the NPU's result is the twin. On a CPU stand-in the twin is the IR's exact
    semantics (FakeQuantize as fp32 formula: targets.openvino_exact), the same on every CPU;
    the CPU's own int8 kernels run too and are reported beside it, with a warning where they
    saturate (no VNNI/AMX: core.machine) and so compute what the NPU never will."""
    from core import machine
    from core.compare import compare
    from quant.train import predict
    from targets.openvino_device import cpu_int8_kernels_faithful, select_device
    from targets.runners import OpenVINORunner

    r = ctx.recipe
    qmodel, meta = ctx.load_int8("npu")
    label = f"NNCF INT8 {_int8_kind(ctx.recipe.npu)} (OpenVINO layout)"
    ref = Twin("npu_qat", label, "qat", predict(qmodel, ctx.splits().test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="npu")
    xml = ctx.layout.openvino_ir
    pixels = ctx.test_pixels()
    choice = select_device(r.npu.device)
    runner = OpenVINORunner(xml, choice, precision_hint=r.npu.precision_hint, batch=1)
    cpu = machine.identity()
    overflow_fix = bool(meta.get("overflow_fix"))
    extra = {"requested_device": r.npu.device, "precision_hint": r.npu.precision_hint, "artifact": str(xml),
             "overflow_fix": overflow_fix, "one_step_bound": _one_step_bound(qmodel, pixels)}
    logits = runner.predict(pixels)
    if runner.device_choice.device == "CPU":
        kernels = compare(logits, ref.logits)
        extra["cpu_int8_kernels"] = {"int8_dot": cpu["int8_dot"], "faithful": cpu_int8_kernels_faithful(cpu, overflow_fix),
                                     **{k: kernels[k] for k in ("argmax_agreement", "max_abs_diff")}}
        if not extra["cpu_int8_kernels"]["faithful"]:
            extra["warning"] = (
                f"this CPU's INT8 kernels saturate ({cpu['int8_dot']}: no VNNI/AMX on {cpu['cpu']}), so they do "
                f"not compute what the NPU will (here: max |d| {kernels['max_abs_diff']:.3g}, argmax agreement "
                f"{kernels['argmax_agreement']:.2%}). To deploy this IR on a CPU without VNNI, build with "
                "npu.device: cpu (NNCF's overflow fix: 7-bit weights, exact there)")
        runner = OpenVINORunner(xml, runner.device_choice, precision_hint=r.npu.precision_hint, batch=1,
                                int8_kernels=False)
        logits = runner.predict(pixels)
    info = runner.describe()
    extra.update(execution_devices=info.get("execution_devices"), inference_precision=info.get("inference_precision"),
                 fallback_reason=info.get("fallback_reason"))
    if info.get("fallback_reason"):
        extra["note"] = (f"{info['fallback_reason']}: the IR ran on {runner.device}, checked with its exact "
                         "semantics (FakeQuantize in fp32), the same on every CPU")
    twin = Twin("npu", "NPU target: OpenVINO INT8 IR", "target", logits, meta["threshold"],
                "openvino", runner.device, runner.precision, "npu", "npu_qat", extra)
    return [ref, twin]


def gpu(ctx: Inputs) -> list[Twin]:
    import json

    from quant.train import predict
    from targets.runners import OrtRunner

    qmodel, meta = ctx.load_int8("gpu")
    label = f"NNCF INT8 {_int8_kind(ctx.recipe.gpu)} (TensorRT layout)"
    ref = Twin("gpu_qat", label, "qat", predict(qmodel, ctx.splits().test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="gpu")
    runner = OrtRunner(ctx.layout.qdq_onnx, exact_qdq=True)
    engine = ctx.layout.trt_engine_record
    note = "TensorRT engine not built here; the QDQ ONNX ran on onnxruntime (CPU) as the reference"
    if engine.is_file():
        e = json.loads(engine.read_text())
        if e.get("engine") is None:
            note = f"TensorRT engine not built ({e.get('skipped')}); the QDQ ONNX ran on onnxruntime (CPU)"
    note += ("; onnxruntime ran the Q/DQ nodes as ONNX defines them (no int8 kernel fusion), so this checks "
             "the artifact; an engine's int8 kernels round requantisation their own way (compare with polygraphy)")
    pixels = ctx.test_pixels()
    twin = Twin("gpu", "GPU target: QDQ ONNX on onnxruntime", "target", runner.predict(pixels),
                meta["threshold"], "onnxruntime (Q/DQ as specified)", "cpu", "int8 QDQ", "gpu", "gpu_qat",
                {"note": note, "artifact": str(ctx.layout.qdq_onnx),
                 "one_step_bound": _one_step_bound(qmodel, pixels)})
    return [ref, twin]


def fpga_stages(stage_dir):
    """The FINN flow's saved intermediate models, in flow order."""
    from compilers.finn.flow import PARTITION_STEP, STEPS
    from compilers.finn.parity import Stage

    models = stage_dir / "intermediate_models"
    parent, out = None, []
    for step in STEPS:
        if step.__name__ == PARTITION_STEP:
            parent = models / "dataflow_parent.onnx"
        out.append(Stage(step.__name__, models / f"{step.__name__}.onnx", parent))
    return out


def fpga(ctx: Inputs) -> list[Twin]:
    """The final dataflow model in FINN python execution. Only when it is not bit-exact are
    all stages re-checked, to name the first divergent node."""
    from compilers.finn.parity import as_outputs, check_stages, run_outputs
    from core.compare import BIT_EXACT_REL, compare

    d = ctx.stage_dir("fpga")
    qat = next(t for t in golden_cache(ctx) if t.key == "qat")
    pixels = ctx.test_pixels()
    stages = fpga_stages(d)
    missing = [s.model_path for s in stages if not s.model_path.is_file()]
    if missing:
        raise UserError(f"FPGA build incomplete ({missing[0]} missing): run 'make target=fpga build'")
    outputs = run_outputs(stages[-1], pixels)
    logits = outputs[0]
    maps = outputs[1].reshape(qat.maps.shape) if qat.maps is not None and len(outputs) > 1 else None
    extra = {"artifact": str(stages[-1].model_path), "final_stage": stages[-1].name,
             "note": "FINN python execution of the generated dataflow graph (bit-accurate model of the "
                     "hardware); fps and resources are estimates until run on a board"}
    reference = qat.logits if maps is None else [qat.logits, qat.maps]
    worst = max(compare(o, r)["max_abs_diff_rel"] for o, r in zip(outputs, as_outputs(reference)))
    if worst > BIT_EXACT_REL:
        per_stage = check_stages(stages, pixels, reference)
        extra["stages"] = [p.to_dict() for p in per_stage]
        bad = next((p for p in per_stage if not p.exact), None)
        if bad is not None and bad.first_divergent_node:
            extra["first_divergent_node"] = bad.first_divergent_node
    return [Twin("fpga", "FPGA target: FINN dataflow (python execution)", "target", logits, qat.threshold,
                 "finn python exec", "cpu (bit-accurate model of the FPGA)",
                 f"w{ctx.recipe.model.weight_bits}a{ctx.recipe.model.act_bits} integer", "fpga", "qat", extra,
                 maps=maps)]


def golden_cache(ctx: Inputs) -> list[Twin]:
    if "golden_twins" not in ctx.values:
        ctx.values["golden_twins"] = golden(ctx)
    return ctx.values["golden_twins"]


TWINS = {"fpga": fpga, "npu": npu, "gpu": gpu}  # one per core.targets.NAMES


def built_targets(ctx: Inputs) -> list[str]:
    """Targets whose build stage finished (stage.json is written last)."""
    return [t for t in TWINS if ctx.layout.finished(t)]
