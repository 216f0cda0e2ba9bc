"""Every model of a recipe, run on the same test set: the golden float model, the QAT
models, and each deployed artifact that was built (its "twin").

A twin is run fresh from its artifact (never from logits saved by the build), so a
tampered or broken artifact shows up in the parity report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass
class ModelRunner:
    """One deployed model (or trained model) ready to run on uint8 pixels [N, 1, H, W].

    The one code path from an artifact to logits: the parity harness runs it on the test
    set, `qdeploy predict` on the user's images. `hardware` says whether the device itself
    ran (an NPU, a TensorRT engine on an NVIDIA GPU, a PYNQ board) or its twin on this CPU.
    """

    key: str  # float | qat | fpga | npu | gpu
    label: str
    run: Callable[[np.ndarray], np.ndarray]  # uint8 pixels -> logits [N, C]
    threshold: float | None  # the stored operating threshold on the defect score
    class_names: tuple[str, ...]
    ok_index: int | None
    runtime: str
    device: str
    precision: str
    hardware: bool = False
    extra: dict = field(default_factory=dict)
    model: Any = None  # the torch model behind float / qat (Grad-CAM), else None
    # a localising model: pixels -> (logits, defect-logit maps); the FPGA's maps come flat [N, -1]
    run_maps: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def ran_on(self) -> str:
        return f"{'hardware' if self.hardware else 'twin'}: {self.runtime} on {self.device}"


def _require_trained(ctx: Inputs) -> None:
    if not ctx.layout.finished("train"):
        raise UserError(f"no trained model in {ctx.stage_dir('train')}: run 'make train' (or any build) first")


def model_runner(ctx: Inputs, key: str) -> ModelRunner:
    """The float (golden) or Brevitas QAT model of the train stage."""
    from quant.checkpoint import load_checkpoint
    from quant.models import model_info
    from quant.train import predict
    from quant.train_seg import predict_maps

    _require_trained(ctx)
    d, r = ctx.stage_dir("train"), ctx.recipe
    if not (d / f"{key}.json").is_file():
        raise UserError(f"{r.model.name} has no Brevitas QAT model (INT8 only): use --target float, npu or gpu")
    model, meta = load_checkpoint(d / key)
    if key == "float":
        label, precision = "float (golden)", "fp32"
    else:
        label = f"Brevitas QAT W{r.model.weight_bits}A{r.model.act_bits}"
        precision = f"w{r.model.weight_bits}a{r.model.act_bits} fake-quant (fp64)"
    # the QAT model is the FPGA's reference: evaluated in float64, its exact semantics
    # (float32 rounds some activations that sit on a rounding boundary either way)
    run_maps = None
    if model_info(r.model.name).segmentation:
        run_maps = lambda px: predict_maps(model, px, float64=key == "qat")  # noqa: E731
    return ModelRunner(key, label, lambda px: predict(model, px, float64=key == "qat"), meta.get("threshold"),
                       tuple(meta.get("class_names") or ()), meta.get("ok_index"), "pytorch", "cpu", precision,
                       model=model, run_maps=run_maps)


def golden(ctx: Inputs) -> list[Twin]:
    _require_trained(ctx)
    d = ctx.stage_dir("train")
    pixels = ctx.test_pixels()
    out = []
    for key in ("float", "qat"):
        if not (d / f"{key}.json").is_file():
            continue  # INT8-only models have no Brevitas QAT model
        m = model_runner(ctx, key)
        maps = None
        if m.run_maps is not None:
            logits, maps = m.run_maps(pixels)
        else:
            logits = m.run(pixels)
        out.append(Twin(key, m.label, "golden" if key == "float" else "qat", logits, m.threshold,
                        m.runtime, m.device, m.precision, target="fpga" if key == "qat" else None, maps=maps))
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

    qmodel, meta = ctx.load_int8("npu")
    label = f"NNCF INT8 {_int8_kind(ctx.recipe.npu)} (OpenVINO layout)"
    ref = Twin("npu_qat", label, "qat", predict(qmodel, ctx.splits().test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="npu")
    pixels = ctx.test_pixels()
    m = npu_runner(ctx)
    cpu = machine.identity()
    overflow_fix = bool(meta.get("overflow_fix"))
    extra = {**m.extra, "overflow_fix": overflow_fix, "one_step_bound": _one_step_bound(qmodel, pixels)}
    logits = m.run(pixels)
    if not m.hardware:  # the CPU stand-in: its own int8 kernels are reported beside the exact semantics
        r, xml = ctx.recipe, ctx.layout.openvino_ir
        kernels_runner = OpenVINORunner(xml, select_device(r.npu.device), precision_hint=r.npu.precision_hint, batch=1)
        kernels = compare(kernels_runner.predict(pixels), ref.logits)
        extra["cpu_int8_kernels"] = {"int8_dot": cpu["int8_dot"], "faithful": cpu_int8_kernels_faithful(cpu, overflow_fix),
                                     **{k: kernels[k] for k in ("argmax_agreement", "max_abs_diff")}}
        if not extra["cpu_int8_kernels"]["faithful"]:
            extra["warning"] = (
                f"this CPU's INT8 kernels saturate ({cpu['int8_dot']}: no VNNI/AMX on {cpu['cpu']}), so they do "
                f"not compute what the NPU will (here: max |d| {kernels['max_abs_diff']:.3g}, argmax agreement "
                f"{kernels['argmax_agreement']:.2%}). To deploy this IR on a CPU without VNNI, build with "
                "npu.device: cpu (NNCF's overflow fix: 7-bit weights, exact there)")
    twin = Twin("npu", m.label, "target", logits, meta["threshold"], m.runtime, m.device, m.precision, "npu",
                "npu_qat", extra)
    return [ref, twin]


def npu_runner(ctx: Inputs) -> ModelRunner:
    """The OpenVINO IR on the device OpenVINO picks: the NPU where there is one (hardware);
    on a CPU stand-in the IR's exact semantics (FakeQuantize as its fp32 formula), the same
    logits on every CPU."""
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner

    r, xml = ctx.recipe, ctx.layout.openvino_ir
    _, meta = ctx.load_int8("npu")
    runner = OpenVINORunner(xml, select_device(r.npu.device), precision_hint=r.npu.precision_hint, batch=1)
    hardware = runner.device_choice.device != "CPU"
    if not hardware:
        runner = OpenVINORunner(xml, runner.device_choice, precision_hint=r.npu.precision_hint, batch=1,
                                int8_kernels=False)
    info = runner.describe()
    extra = {"requested_device": r.npu.device, "precision_hint": r.npu.precision_hint, "artifact": str(xml),
             "execution_devices": info.get("execution_devices"), "inference_precision": info.get("inference_precision"),
             "fallback_reason": info.get("fallback_reason")}
    if info.get("fallback_reason"):
        extra["note"] = (f"{info['fallback_reason']}: the IR ran on {runner.device}, checked with its exact "
                         "semantics (FakeQuantize in fp32), the same on every CPU")
    return ModelRunner("npu", "NPU target: OpenVINO INT8 IR", runner.predict, meta["threshold"],
                       tuple(meta.get("class_names") or ()), meta.get("ok_index"), "openvino", runner.device,
                       runner.precision, hardware, extra)


def gpu(ctx: Inputs) -> list[Twin]:
    from quant.train import predict

    qmodel, meta = ctx.load_int8("gpu")
    label = f"NNCF INT8 {_int8_kind(ctx.recipe.gpu)} (TensorRT layout)"
    ref = Twin("gpu_qat", label, "qat", predict(qmodel, ctx.splits().test),
               meta["threshold"], "pytorch+nncf", "cpu", "int8 fake-quant", target="gpu")
    m = gpu_runner(ctx)
    pixels = ctx.test_pixels()
    twin = Twin("gpu", m.label, "target", m.run(pixels), meta["threshold"], m.runtime, m.device, m.precision,
                "gpu", "gpu_qat", {**m.extra, "one_step_bound": _one_step_bound(qmodel, pixels)})
    return [ref, twin]


def gpu_runner(ctx: Inputs) -> ModelRunner:
    """The TensorRT engine where one was built and TensorRT runs here (hardware), else the
    QDQ ONNX on onnxruntime with the Q/DQ nodes as ONNX specifies them (the twin)."""
    import json

    from compilers.tensorrt.engine import tensorrt_available
    from targets.runners import OrtRunner

    _, meta = ctx.load_int8("gpu")
    classes, ok = tuple(meta.get("class_names") or ()), meta.get("ok_index")
    if ctx.layout.trt_engine.is_file() and tensorrt_available()[0]:
        from targets.tensorrt_runner import TensorRTRunner

        trt = TensorRTRunner(ctx.layout.trt_engine)
        return ModelRunner("gpu", "GPU target: TensorRT engine", trt.predict, meta["threshold"], classes, ok,
                           "tensorrt", trt.device, "int8", True, {"artifact": str(ctx.layout.trt_engine)})
    runner = OrtRunner(ctx.layout.qdq_onnx, exact_qdq=True)
    engine = ctx.layout.trt_engine_record
    note = "TensorRT engine not built here; the QDQ ONNX ran on onnxruntime (CPU) as the reference"
    if engine.is_file():
        e = json.loads(engine.read_text())
        if e.get("engine") is None:
            note = f"TensorRT engine not built ({e.get('skipped')}); the QDQ ONNX ran on onnxruntime (CPU)"
    note += ("; onnxruntime ran the Q/DQ nodes as ONNX defines them (no int8 kernel fusion), so this checks "
             "the artifact; an engine's int8 kernels round requantisation their own way (compare with polygraphy)")
    return ModelRunner("gpu", "GPU target: QDQ ONNX on onnxruntime", runner.predict, meta["threshold"], classes, ok,
                       "onnxruntime (Q/DQ as specified)", "cpu", "int8 QDQ", False,
                       {"note": note, "artifact": str(ctx.layout.qdq_onnx)})


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
    from compilers.finn.parity import as_outputs, check_stages
    from core.compare import BIT_EXACT_REL, compare

    qat = next(t for t in golden_cache(ctx) if t.key == "qat")
    pixels = ctx.test_pixels()
    stages = fpga_stages(ctx.stage_dir("fpga"))
    m = fpga_runner(ctx)
    maps = None
    if m.run_maps is not None and qat.maps is not None:
        logits, maps = m.run_maps(pixels)
        outputs, reference = [logits, maps.reshape(len(maps), -1)], [qat.logits, qat.maps]
    else:
        logits = m.run(pixels)
        outputs, reference = [logits], qat.logits
    extra = dict(m.extra)
    worst = max(compare(o, r)["max_abs_diff_rel"] for o, r in zip(outputs, as_outputs(reference)))
    if worst > BIT_EXACT_REL:
        per_stage = check_stages(stages, pixels, reference)
        extra["stages"] = [p.to_dict() for p in per_stage]
        bad = next((p for p in per_stage if not p.exact), None)
        if bad is not None and bad.first_divergent_node:
            extra["first_divergent_node"] = bad.first_divergent_node
    return [Twin("fpga", m.label, "target", logits, qat.threshold, m.runtime, m.device, m.precision, "fpga", "qat",
                 extra, maps=maps)]


def fpga_runner(ctx: Inputs) -> ModelRunner:
    """The design on a PYNQ board where its deployment package and the pynq library are
    here (hardware); otherwise the final dataflow graph in FINN python execution, the
    bit-accurate model of the hardware (the twin)."""
    from compilers.finn.parity import run_outputs, run_stage
    from quant.checkpoint import read_meta
    from quant.models import model_info
    from targets.pynq_runner import PynqRunner, pynq_available

    d = ctx.stage_dir("fpga")
    stages = fpga_stages(d)
    missing = [s.model_path for s in stages if not s.model_path.is_file()]
    if missing:
        raise UserError(f"FPGA build incomplete ({missing[0]} missing): run 'make target=fpga build'")
    meta = read_meta(ctx.layout.qat_checkpoint)
    classes, ok, thr = tuple(meta.get("class_names") or ()), meta.get("ok_index"), meta.get("threshold")
    precision = f"w{ctx.recipe.model.weight_bits}a{ctx.recipe.model.act_bits} integer"
    deploy = ctx.layout.fpga_deploy
    board, _reason = pynq_available(deploy)
    if board:
        pynq = PynqRunner(deploy)
        return ModelRunner("fpga", "FPGA target: FINN dataflow on the board", pynq.predict, thr, classes, ok,
                           "pynq", pynq.device, precision, True, {"artifact": str(deploy)})
    def run_maps(px):  # the map output reshaped as the parent graph declares it: [N, 1, h, w]
        from qonnx.core.modelwrapper import ModelWrapper

        logits, flat = run_outputs(stages[-1], px)[:2]
        parent = ModelWrapper(str(stages[-1].parent_path))
        shape = parent.get_tensor_shape(parent.graph.output[1].name)
        return logits, flat.reshape(len(px), *shape[1:])

    return ModelRunner("fpga", "FPGA target: FINN dataflow (python execution)", lambda px: run_stage(stages[-1], px),
                       thr, classes, ok, "finn python exec", "cpu (bit-accurate model of the FPGA)", precision, False,
                       {"artifact": str(stages[-1].model_path), "final_stage": stages[-1].name,
                        "note": "FINN python execution of the generated dataflow graph (bit-accurate model of the "
                                "hardware); fps and resources are estimates until run on a board"},
                       run_maps=run_maps if model_info(ctx.recipe.model.name).segmentation else None)


def golden_cache(ctx: Inputs) -> list[Twin]:
    if "golden_twins" not in ctx.values:
        ctx.values["golden_twins"] = golden(ctx)
    return ctx.values["golden_twins"]


TWINS = {"fpga": fpga, "npu": npu, "gpu": gpu}  # one per core.targets.NAMES
RUNNERS = {"fpga": fpga_runner, "npu": npu_runner, "gpu": gpu_runner}  # the one runner per target


def runner_for(ctx: Inputs, key: str) -> ModelRunner:
    """float | qat | fpga | npu | gpu -> its runner (what the parity harness runs)."""
    if key in ("float", "qat"):
        return model_runner(ctx, key)
    return RUNNERS[key](ctx)


def built_targets(ctx: Inputs) -> list[str]:
    """Targets whose build stage finished (stage.json is written last)."""
    return [t for t in TWINS if ctx.layout.finished(t)]
