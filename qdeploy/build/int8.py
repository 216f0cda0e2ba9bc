"""INT8 QAT with NNCF, shared by the NPU (OpenVINO) and GPU (TensorRT) stages.

Start from the float checkpoint, insert NNCF quantizers (`mode` picks the target's
quantizer layout), fine-tune with the common loop, choose the operating threshold on
validation and save NNCF's config + state_dict.
"""
from __future__ import annotations

from pathlib import Path

from qdeploy.build.common import splits
from qdeploy.steps import Context

CHECKPOINT = "qat_nncf.pt"


def calibration_batches(ctx: Context, batch_size: int = 32):
    from torch.utils.data import DataLoader

    from quant.preprocess import to_input

    import torch

    # seeded shuffle: calibration ranges come from whole batches, which must mix ok and defect images
    gen = torch.Generator().manual_seed(ctx.recipe.seed)
    for pixels, _ in DataLoader(splits(ctx).train, batch_size=batch_size, shuffle=True, generator=gen):
        yield to_input(pixels)


def float_model(ctx: Context):
    from quant.checkpoint import load_checkpoint

    model, meta = load_checkpoint(ctx.stage_dir("train") / "float")
    return model, meta


def train_int8(ctx: Context, stage: str, mode: str, epochs: int) -> Path:
    from quant import metrics
    from quant.nncf_qat import quantize_int8, save_nncf_checkpoint
    from quant.train import fit, predict, seed_everything

    r, s = ctx.recipe, splits(ctx)
    seed_everything(r.seed + 2)
    model, meta = float_model(ctx)
    qmodel = quantize_int8(model, calibration_batches(ctx), mode=mode, subset_size=128)
    hist = fit(qmodel, s, r.train, epochs, r.train.lr * 0.05, r.seed + 2, f"INT8 QAT ({mode})")
    thr = metrics.choose_threshold(predict(qmodel, s.val), s.val.labels, s.ok_index, r.train.target_recall, r.train.target_fpr)
    path = ctx.stage_dir(stage) / CHECKPOINT
    save_nncf_checkpoint(path, qmodel, {"model": meta["model"], "mode": mode, "threshold": thr, "history": hist,
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
        ctx.values[key] = load_nncf_checkpoint(ctx.stage_dir(stage) / CHECKPOINT, create_model(**meta["model"]))
    return ctx.values[key]
