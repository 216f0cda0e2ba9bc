"""INT8 QAT with NNCF, shared by the NPU (OpenVINO) and GPU (TensorRT) stages.

Start from the float checkpoint, insert NNCF quantizers (`mode` picks the target's
quantizer layout), fine-tune with the common loop, choose the operating threshold on
validation and save NNCF's config + state_dict.
"""
from __future__ import annotations

from pathlib import Path

from qdeploy.stages.common import splits
from qdeploy.steps import Context



def calibration_batches(ctx: Context, batch_size: int = 32):
    from torch.utils.data import DataLoader

    from quant.preprocess import to_input

    import torch

    # seeded shuffle: calibration ranges come from whole batches, which must mix ok and defect images
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    for pixels, _ in DataLoader(splits(ctx).train, batch_size=batch_size, shuffle=True, generator=gen):
        yield to_input(pixels)


def float_model(ctx: Context):
    """The float model the INT8 artifacts start from; of a two-output (segmentation) model its
    decision output only: the NPU/GPU artifacts classify, the FPGA design also localises."""
    from quant.checkpoint import load_checkpoint

    model, meta = load_checkpoint(ctx.layout.float_checkpoint)
    return decision_only(model, meta["model"]["name"]), meta


def decision_only(model, name: str):
    from quant.models import model_info
    from quant.models.segdec import DecisionOnly

    return DecisionOnly(model) if model_info(name).segmentation else model


def fold_batchnorm(model):
    """A copy of `model` with every BatchNorm folded into the convolution feeding it.

    OpenVINO and TensorRT fold BN into the conv anyway; folding it before INT8 QAT makes
    the QAT model compute what the deployed one computes, so parity is not lost to a
    different float rounding ahead of each activation quantizer. The result is still a
    plain nn.Module (BN replaced by Identity), so NNCF uses its usual torch backend.
    """
    import copy

    import torch.fx
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d) and len(src.users) == 1:
            _replace(model, src.target, fuse_conv_bn_eval(modules[src.target], modules[node.target]))
            _replace(model, node.target, nn.Identity())
    return model


def _replace(model, dotted: str, module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def train_int8(ctx: Context, stage: str, mode: str, epochs: int) -> Path:
    from quant import metrics
    from quant.nncf_qat import quantize_int8, save_nncf_checkpoint
    from quant.train import fit, predict, seed_everything

    r, s = ctx.recipe, splits(ctx)
    seed_everything(r.seed + 2)
    model, meta = float_model(ctx)
    # an OpenVINO IR meant for CPUs (npu.device: cpu) gets NNCF's overflow fix, so it is exact
    # on CPUs without VNNI too; NPU and GPU artifacts accumulate exactly and do without it
    overflow_fix = mode == "openvino" and r.npu.device == "cpu"
    qmodel = quantize_int8(fold_batchnorm(model), calibration_batches(ctx), mode=mode, subset_size=128,
                           overflow_fix=overflow_fix)
    hist = fit(qmodel, s, r.train, epochs, r.train.lr * 0.05, r.seed + 2, f"INT8 QAT ({mode})")
    thr = metrics.choose_threshold(predict(qmodel, s.val), s.val.labels, s.ok_index, r.train.target_recall, r.train.target_fpr)
    path = ctx.layout.int8_checkpoint(stage)
    save_nncf_checkpoint(path, qmodel, {"model": meta["model"], "mode": mode, "overflow_fix": overflow_fix, "threshold": thr, "history": hist,
                                        "class_names": list(s.class_names), "ok_index": s.ok_index})
    ctx.values[f"{stage}_qmodel"] = qmodel
    return path


def load_int8(ctx: Context, stage: str):
    """-> (NNCF torch model, meta) of a stage."""
    from quant.models import create_model
    from quant.nncf_qat import load_nncf_checkpoint

    key = f"{stage}_qmodel_loaded"
    if key not in ctx.values:
        _, meta = float_model(ctx)
        fresh = fold_batchnorm(decision_only(create_model(**meta["model"]), meta["model"]["name"]))  # as QAT ran
        ctx.values[key] = load_nncf_checkpoint(ctx.layout.int8_checkpoint(stage), fresh)
    return ctx.values[key]
