"""Stage `train`: float pre-training, QAT fine-tuning, operating threshold, metrics, curves."""
from __future__ import annotations

import numpy as np
from rich.table import Table

from core.atomic import atomic_path, write_json
from core.console import console
from core.errors import UserError
from qdeploy.recipe import TrainConfig
from qdeploy.stages.common import model_args, splits
from qdeploy.stages.fpga import check_part_and_model
from qdeploy.steps import Context


def check_model(ctx: Context):
    """An unknown model name fails before the dataset is generated or loaded; a model that
    could not be built for the FPGA later (shape, FINN rule, fps) is said now, as a note."""
    from quant.models import model_info

    r = ctx.recipe
    if model_info(r.model.name).segmentation and r.train.qat_distill > 0:
        raise UserError(f"train.qat_distill: {r.model.name} (two outputs, step budgets) does not distil: set it to 0")
    if model_info(r.model.name).fpga_lowerable:
        try:
            check_part_and_model(ctx)
        except UserError as e:
            console.print(f"[yellow]note: this recipe cannot be built for --target fpga: {e}[/yellow]")


def step_train_float(ctx: Context):
    from quant.checkpoint import save_checkpoint
    from quant.models import create_model
    from quant.train import seed_everything

    r = ctx.recipe
    seed_everything(r.seed)
    args = model_args(ctx, quantized=False)
    model = create_model(**args)
    hist = train_phase(ctx, model, "float")
    save_checkpoint(ctx.layout.float_checkpoint, model, {"model": args, "history": hist})
    ctx.values["float_model"] = model


def train_phase(ctx: Context, model, phase: str, teacher=None) -> dict:
    """Float pre-training ("float") or QAT ("qat") of `model` in place: the epoch loop
    (quant.train.fit; QAT distils from `teacher`, the float model, by train.qat_distill) or,
    for a two-output model, the step-budget loop with the masks (quant.train_seg.fit_segdec,
    where train.qat_freeze_bn_after counts steps)."""
    from quant.train import fit

    r, t = ctx.recipe, ctx.recipe.train
    qat = phase == "qat"
    lr, seed = (qat_lr(t), r.seed + 1) if qat else (t.lr, r.seed)
    label = f"W{r.model.weight_bits}A{r.model.act_bits}" if qat else "float"
    freeze = t.qat_freeze_bn_after if qat else None
    ema = t.qat_ema if qat else t.ema
    if not segmentation(ctx):
        return fit(model, splits(ctx), t, t.qat_epochs if qat else t.float_epochs, lr, seed, label, freeze_bn_from=freeze,
                   teacher=teacher, ema=ema)
    from quant.train_seg import fit_segdec

    steps = t.qat_steps if qat else t.float_steps
    return fit_segdec(model, splits(ctx), t, steps, lr, seed, label, crop_steps=0 if qat else t.crop_steps,
                      freeze_bn_from=None if freeze is None else freeze / steps, ema=ema)


def segmentation(ctx: Context) -> bool:
    """A two-output model (decision + defect map), trained with the pixel masks."""
    from quant.models import model_info

    return model_info(ctx.recipe.model.name).segmentation


def has_brevitas_qat(ctx: Context) -> bool:
    """INT8-only models (effnet_b0: SiLU + squeeze-excite) get their QAT from NNCF in the
    npu/gpu stages; everything else also gets a Brevitas QAT model for the FPGA."""
    from quant.models import model_info

    return not model_info(ctx.recipe.model.name).int8_only


def trained(ctx: Context) -> tuple[str, ...]:
    return ("float", "qat") if has_brevitas_qat(ctx) else ("float",)


def qat_lr(cfg) -> float:
    return cfg.qat_lr if cfg.qat_lr is not None else cfg.lr * 0.5


def step_train_qat(ctx: Context):
    from quant.checkpoint import save_checkpoint
    from quant.models import create_model, load_float_weights
    from quant.train import seed_everything

    r = ctx.recipe
    if not has_brevitas_qat(ctx):
        console.print(f"{r.model.name}: INT8 only (no Brevitas QAT); NNCF QAT runs in the npu/gpu builds")
        return
    seed_everything(r.seed + 1)
    args = model_args(ctx, quantized=True)
    model = create_model(**args)
    float_model = ctx.values.get("float_model")
    if float_model is None:
        from quant.checkpoint import load_checkpoint

        float_model, _ = load_checkpoint(ctx.layout.float_checkpoint)
    transfer = load_float_weights(model, float_model)
    hist = train_phase(ctx, model, "qat", teacher=float_model)
    save_checkpoint(ctx.layout.qat_checkpoint, model, {"model": args, "history": hist,
                                                             "init_from_float": {"loaded": len(transfer.loaded),
                                                                                 "quantizer_keys_new": len(transfer.quantizer_keys)}})
    ctx.values["qat"] = (model, {"model": args})


def step_evaluate(ctx: Context):
    """Pick the operating threshold on validation, evaluate float and QAT on test."""
    from quant import metrics
    from quant.checkpoint import load_checkpoint, save_checkpoint
    from quant.train import forward_outputs
    from quant.train_seg import pixel_metrics

    r, s = ctx.recipe, splits(ctx)
    d = ctx.stage_dir("train")
    results = {}
    for name in trained(ctx):
        model, meta = load_checkpoint(d / name)
        val, test = forward_outputs(model, s.val), forward_outputs(model, s.test)
        test_logits = test[0]
        thr = metrics.choose_threshold(val[0], s.val.labels, s.ok_index, r.train.target_recall, r.train.target_fpr)
        results[name] = {
            "val": metrics.evaluate(val[0], s.val.labels, s.ok_index, thr, r.train.report_fpr),
            "test": metrics.evaluate(test_logits, s.test.labels, s.ok_index, thr, r.train.report_fpr),
        }
        if len(test) > 1:  # a localising model: its defect map against the masks
            results[name]["pixel"] = {"val": pixel_metrics(val[1], *s.val.mask_array()),
                                      "test": pixel_metrics(test[1], *s.test.mask_array())}
        meta.update(threshold=thr, class_names=list(s.class_names), ok_index=s.ok_index,
                    metrics=results[name], recipe=r.name, seed=r.seed)
        save_checkpoint(d / name, model, meta)
        with atomic_path(d / f"{name}_test_logits.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, test_logits)
    ctx.values.pop("qat", None)
    write_json(d / "metrics.json", {"classes": list(s.class_names), "ok_index": s.ok_index,
                                    "split_sizes": [len(s.train), len(s.val), len(s.test)],
                                    "notes": list(s.notes), **results})
    print_metrics_table(results, r)


def print_metrics_table(results: dict, r) -> None:
    table = Table(title=f"{r.name}: {r.model.name} float vs W{r.model.weight_bits}A{r.model.act_bits} (validation | test)")
    table.add_column("metric")
    for name in results:
        label = "float" if name == "float" else f"W{r.model.weight_bits}A{r.model.act_bits}"
        table.add_column(f"{label} val", justify="right")
        table.add_column(f"{label} test", justify="right")
    keys = ["accuracy", "precision", "recall", "f1", "ap", "auroc", "recall_at_fpr", "op_recall", "op_fpr", "threshold"]
    for k in keys:
        if k not in results["float"]["val"]:
            continue
        row = [k if k != "recall_at_fpr" else f"recall@FPR={r.train.report_fpr:g}"]
        for name in results:
            for split in ("val", "test"):
                row.append(f"{results[name][split].get(k, float('nan')):.4f}")
        table.add_row(*row)
    for k in ("dice", "iou", "region_recall"):
        if "pixel" in results["float"]:
            table.add_row(f"pixel {k}", *[f"{results[n]['pixel'][sp].get(k, float('nan')):.4f}"
                                          for n in results for sp in ("val", "test")])
    console.print(table)


def step_plot_curves(ctx: Context):
    from quant.checkpoint import read_meta
    from quant.training_plots import plot_curves

    d = ctx.stage_dir("train")
    plot_curves([read_meta(d / name)["history"] for name in trained(ctx)], d / "curves.png")


# the float model does not depend on QAT's settings: tuning them re-runs QAT and what follows
step_train_float.ignores = (*(f"train.{k}" for k in TrainConfig.model_fields if k.startswith("qat_")),
                            "model.edge_weight_bits", "model.weight_scale")

PREFLIGHT = [check_model]
STEPS = [step_train_float, step_train_qat, step_evaluate, step_plot_curves]
