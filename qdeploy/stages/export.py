"""Stage `export`: QONNX export of the QAT model, checked with qonnx against torch."""
from __future__ import annotations

from core.atomic import write_json
from core.console import console
from core.errors import UserError
from qdeploy.stages.common import qat_checkpoint, test_pixels
from qdeploy.steps import Context

def step_export_qonnx(ctx: Context):
    from quant.export import check_qonnx, export_qonnx
    from quant.preprocess import to_input_np

    model, meta = qat_checkpoint(ctx)
    path = export_qonnx(model, tuple(ctx.recipe.dataset.size), ctx.layout.qonnx)
    check = check_qonnx(path, model, to_input_np(test_pixels(ctx, limit=64)))
    write_json(ctx.stage_dir("export") / "check.json", check)
    console.print(f"QONNX export {path}: qonnx vs torch on {check['n']} test images: "
                  f"max |d| {check['max_abs_diff']:.2e}, argmax agreement {check['argmax_agreement']:.2%}")


STEPS = [step_export_qonnx]


def check_exportable(ctx: Context):
    from quant.models import model_info

    info = model_info(ctx.recipe.model.name)
    if info.int8_only:
        raise UserError(f"model.name={info.name} has no Brevitas QAT model to export to QONNX (INT8 only): "
                        "build it with --target npu or gpu")


PREFLIGHT = [check_exportable]
