"""The build as data: each stage is an ordered list of named steps.

Steps are thin: they take what they need from the context, call one library function
(quant -> compilers -> targets -> reference) and leave their artifact in the stage
directory. `STAGES` names every stage's steps in one place; `PLAN` says which stages a
command runs.
"""
from __future__ import annotations

import json

import numpy as np
from rich.table import Table

from qdeploy import __version__
from qdeploy.atomic import write_json
from qdeploy.steps import Context, console, run_stage


# ---------------------------------------------------------------- shared lookups
def splits(ctx: Context):
    if "splits" not in ctx.values:
        from quant.data.splits import load_splits

        r = ctx.recipe
        ctx.values["splits"] = load_splits(r.dataset, r.seed, ctx.build_dir.parent / "_data")
    return ctx.values["splits"]


def model_args(ctx: Context, quantized: bool) -> dict:
    r, s = ctx.recipe, splits(ctx)
    m = r.model
    return dict(name=m.name, num_classes=len(s.class_names), in_size=tuple(r.dataset.size), width=m.width,
                weight_bits=m.weight_bits, act_bits=m.act_bits, input_bits=m.input_bits, quantized=quantized)


def test_pixels(ctx: Context, limit: int | None = None) -> np.ndarray:
    """The test set as uint8 [N,1,H,W] (the same images, in the same order, for every target)."""
    s = splits(ctx).test
    n = len(s) if limit is None else min(limit, len(s))
    return np.stack([s.pixels(i) for i in range(n)])[:, None]


def qat_checkpoint(ctx: Context):
    from quant.checkpoint import load_checkpoint

    if "qat" not in ctx.values:
        ctx.values["qat"] = load_checkpoint(ctx.stage_dir("train") / "qat")
    return ctx.values["qat"]


# ---------------------------------------------------------------- train
def step_train_float(ctx: Context):
    from quant.checkpoint import save_checkpoint
    from quant.models import create_model
    from quant.train import fit, seed_everything

    r = ctx.recipe
    seed_everything(r.seed)
    args = model_args(ctx, quantized=False)
    model = create_model(**args)
    hist = fit(model, splits(ctx), r.train, r.train.float_epochs, r.train.lr, r.seed, "float")
    save_checkpoint(ctx.stage_dir("train") / "float", model, {"model": args, "history": hist})
    ctx.values["float_model"] = model


def step_train_qat(ctx: Context):
    from quant.checkpoint import save_checkpoint
    from quant.models import create_model
    from quant.train import fit, seed_everything

    r = ctx.recipe
    seed_everything(r.seed + 1)
    args = model_args(ctx, quantized=True)
    model = create_model(**args)
    float_model = ctx.values.get("float_model")
    if float_model is None:
        from quant.checkpoint import load_checkpoint

        float_model, _ = load_checkpoint(ctx.stage_dir("train") / "float")
    missing, _ = model.load_state_dict(float_model.state_dict(), strict=False)
    hist = fit(model, splits(ctx), r.train, r.train.qat_epochs, r.train.lr * 0.5, r.seed + 1, f"W{r.model.weight_bits}A{r.model.act_bits}")
    save_checkpoint(ctx.stage_dir("train") / "qat", model, {"model": args, "history": hist,
                                                             "init_from_float_missing_keys": len(missing)})
    ctx.values["qat"] = (model, {"model": args})


def step_evaluate(ctx: Context):
    """Pick the operating threshold on validation, evaluate float and QAT on test."""
    from quant import metrics
    from quant.checkpoint import load_checkpoint, read_meta, save_checkpoint
    from quant.train import predict

    r, s = ctx.recipe, splits(ctx)
    d = ctx.stage_dir("train")
    results = {}
    for name in ("float", "qat"):
        model, meta = load_checkpoint(d / name)
        thr = metrics.choose_threshold(predict(model, s.val), s.val.labels, s.ok_index,
                                       r.train.target_recall, r.train.target_fpr)
        test_logits = predict(model, s.test)
        results[name] = {
            "val": metrics.evaluate(predict(model, s.val), s.val.labels, s.ok_index, thr, r.train.report_fpr),
            "test": metrics.evaluate(test_logits, s.test.labels, s.ok_index, thr, r.train.report_fpr),
        }
        meta.update(threshold=thr, class_names=list(s.class_names), ok_index=s.ok_index,
                    metrics=results[name], recipe=r.name, seed=r.seed)
        save_checkpoint(d / name, model, meta)
        np.save(d / f"{name}_test_logits.npy", test_logits)
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
    console.print(table)


def step_plot_curves(ctx: Context):
    from quant.checkpoint import read_meta
    from quant.training_plots import plot_curves

    d = ctx.stage_dir("train")
    plot_curves([read_meta(d / "float")["history"], read_meta(d / "qat")["history"]], d / "curves.png")


# ---------------------------------------------------------------- export
def step_export_qonnx(ctx: Context):
    from quant.export import check_qonnx, export_qonnx
    from quant.preprocess import to_input_np

    model, meta = qat_checkpoint(ctx)
    path = export_qonnx(model, tuple(ctx.recipe.dataset.size), ctx.stage_dir("export") / "model.qonnx.onnx")
    check = check_qonnx(path, model, to_input_np(test_pixels(ctx, limit=64)))
    write_json(ctx.stage_dir("export") / "check.json", check)
    console.print(f"QONNX export {path}: qonnx vs torch on {check['n']} test images: "
                  f"max |d| {check['max_abs_diff']:.2e}, argmax agreement {check['argmax_agreement']:.2%}")


STAGES = {
    "train": [step_train_float, step_train_qat, step_evaluate, step_plot_curves],
    "export": [step_export_qonnx],
}


def stage_digest(recipe, stage: str) -> str:
    sections = {
        "train": ("seed", "dataset", "model", "train"),
        "export": ("seed", "dataset", "model", "train"),
        "fpga": ("seed", "dataset", "model", "train", "fpga"),
        "npu": ("seed", "dataset", "model", "train", "npu"),
        "gpu": ("seed", "dataset", "model", "train", "gpu"),
    }[stage]
    return f"{__version__}-{recipe.digest(*sections)}"


PLAN = {
    "train": ["train"],
    "export": ["train", "export"],
    "fpga": ["train", "export", "fpga"],
    "npu": ["train", "npu"],
    "gpu": ["train", "gpu"],
}


def run_plan(ctx: Context, command: str, force: bool = False) -> None:
    for stage in PLAN[command]:
        run_stage(ctx, stage, STAGES[stage], stage_digest(ctx.recipe, stage), force=force and stage == PLAN[command][-1])
