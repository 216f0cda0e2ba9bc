"""Stage `gpu`: NNCF INT8 (post-training, then `gpu.qat_epochs` of QAT) in TensorRT's
layout -> QDQ ONNX -> layout check -> onnxruntime parity -> TensorRT engine where TensorRT and a CUDA GPU exist."""
from __future__ import annotations

from core.atomic import write_json
from core.console import console
from core.errors import UserError
from qdeploy.stages.harness import target_parity
from qdeploy.stages.int8 import load_int8, train_int8
from qdeploy.steps import Context

STAGE = "gpu"


def check_engine(ctx: Context):
    """gpu.require_engine on a machine without TensorRT or a CUDA GPU fails here, before any training."""
    if ctx.recipe.gpu.require_engine:
        from compilers.tensorrt.engine import tensorrt_available

        ok, reason = tensorrt_available()
        if not ok:
            raise UserError(f"gpu.require_engine is true but {reason}; set gpu.require_engine: false to skip the engine here")


def step_nncf_qat(ctx: Context):
    train_int8(ctx, STAGE, mode="tensorrt", epochs=ctx.recipe.gpu.qat_epochs)


def step_qdq_onnx(ctx: Context):
    """Standard Q/DQ export, then rewritten into TensorRT's preferred form and checked."""
    import torch

    from compilers.tensorrt import finalize_qdq
    from quant.nncf_qat import export_qdq_onnx

    d = ctx.stage_dir(STAGE)
    h, w = ctx.recipe.dataset.size
    qmodel, _ = load_int8(ctx, STAGE)
    raw = export_qdq_onnx(qmodel, torch.zeros(1, 1, h, w), d / "model.exported.onnx")
    report = finalize_qdq(raw, ctx.layout.qdq_onnx)  # runs check_trt_layout: a broken layout stops the build here
    write_json(d / "finalize.json", report.to_dict())
    raw.unlink()
    console.print(f"QDQ ONNX {ctx.layout.qdq_onnx}: TensorRT layout OK ({report.layout['quantize_nodes']} Q, "
                  f"{len(report.layout['quantized_layers'])} INT8 layers, "
                  f"{len(report.layout['float_layers'])} float layers)")


def step_trt_commands(ctx: Context):
    from compilers.tensorrt import write_trt_commands

    write_trt_commands(ctx.layout.qdq_onnx)


def step_parity(ctx: Context):
    target_parity(ctx, STAGE)


step_parity.inputs = ("gates",)  # a changed gate re-runs this step, not the build before it


def step_engine(ctx: Context):
    from targets.tensorrt_runner import build_and_measure

    d = ctx.stage_dir(STAGE)
    result = build_and_measure(ctx.layout.qdq_onnx, d, require_engine=ctx.recipe.gpu.require_engine)
    write_json(ctx.layout.trt_engine_record, result)
    if result.get("engine") is None:
        console.print(f"[yellow]TensorRT engine not built: {result['skipped']}. "
                      f"To build it on a GPU machine: {d / 'trt_build.sh'}[/yellow]")


PREFLIGHT = [check_engine]
STEPS = [step_nncf_qat, step_qdq_onnx, step_trt_commands, step_engine, step_parity]
