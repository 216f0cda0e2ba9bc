"""Stage `npu`: NNCF INT8 (post-training, then `npu.qat_epochs` of QAT) -> static-shape
OpenVINO IR -> parity on the device OpenVINO picks."""
from __future__ import annotations

from qdeploy.stages.harness import target_parity
from qdeploy.stages.int8 import load_int8, train_int8
from qdeploy.steps import Context

STAGE = "npu"


def check_device(ctx: Context):
    """npu.device: npu on a machine without an NPU fails here, before any training."""
    if ctx.recipe.npu.device == "npu":
        from targets.openvino_device import select_device

        select_device("npu")


def step_nncf_qat(ctx: Context):
    train_int8(ctx, STAGE, mode="openvino", epochs=ctx.recipe.npu.qat_epochs)


def step_openvino_ir(ctx: Context):
    from compilers.openvino_ir import to_openvino_ir

    h, w = ctx.recipe.dataset.size
    qmodel, _ = load_int8(ctx, STAGE)
    to_openvino_ir(qmodel, (1, 1, h, w), ctx.layout.openvino_ir)


def step_parity(ctx: Context):
    target_parity(ctx, STAGE)


step_parity.inputs = ("gates",)  # a changed gate re-runs this step, not the build before it


PREFLIGHT = [check_device]
STEPS = [step_nncf_qat, step_openvino_ir, step_parity]
