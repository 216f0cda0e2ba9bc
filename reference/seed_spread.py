"""A recipe's quality over several seeds: mean, standard deviation, worst and best of every
metric (`qdeploy sweep`). One seed's number is one draw of the split, the initialisation, the
augmentation and the CPU's summation order; the spread is the property of the recipe.

    run_metrics(metrics_json) -> {"qat test accuracy": 0.994, ..., "qat cost accuracy (points)": 0.3}
    spread({seed: run_metrics}) -> {metric: {"mean", "sd", "min", "max", "n", "by_seed"}}
"""
from __future__ import annotations

import math

import numpy as np

SWEEP_SCHEMA = "qdeploy.sweep/1"

# the image-level metrics of quant.metrics.evaluate worth a spread (no thresholds, counts, chance levels)
IMAGE_KEYS = ("accuracy", "f1", "defect_f1", "ap", "auroc", "recall_at_fpr", "op_recall", "op_fpr", "op_f1")
PIXEL_KEYS = ("dice", "iou", "region_recall")
# what QAT costs against float, in points (100 x the difference): positive = QAT is worse
COST_KEYS = ("accuracy", "f1", "defect_f1", "ap", "auroc")
MODELS = ("float", "qat")


def run_metrics(metrics: dict) -> dict[str, float]:
    """One training run's train/metrics.json, flattened to "<model> <split> <metric>" values
    (finite ones only: a multi-class task has no AP), plus the QAT cost of its test metrics."""
    rows: dict[str, float] = {}
    for model in MODELS:
        if model not in metrics:
            continue
        for split in ("val", "test"):
            for k in IMAGE_KEYS:
                _put(rows, f"{model} {split} {k}", metrics[model][split].get(k))
            for k in PIXEL_KEYS:
                _put(rows, f"{model} {split} pixel {k}", metrics[model].get("pixel", {}).get(split, {}).get(k))
    if all(m in metrics for m in MODELS):
        for k in COST_KEYS:
            f, q = rows.get(f"float test {k}"), rows.get(f"qat test {k}")
            if f is not None and q is not None:
                rows[f"qat cost {k} (points)"] = 100.0 * (f - q)
    return rows


def _put(rows: dict, key: str, value) -> None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        rows[key] = float(value)


def spread(runs: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Per metric over the seeds that have it: mean, sample standard deviation (ddof 1; 0 for
    one seed), min, max, n and the value of each seed."""
    out = {}
    keys = sorted({k for r in runs.values() for k in r})
    for k in keys:
        by_seed = {int(s): r[k] for s, r in sorted(runs.items()) if k in r}
        v = np.array(list(by_seed.values()), dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                  "min": float(v.min()), "max": float(v.max()), "n": int(len(v)),
                  "by_seed": {str(s): x for s, x in by_seed.items()}}
    return out


def render_markdown(sweep: dict, keys: tuple[str, ...]) -> str:
    """A sweep.json as a markdown table: one row per metric in `keys` that it holds, mean +- sd,
    min, max and each seed's value; the machine and the seeds under it."""
    seeds = [str(s) for s in sweep["seeds"]]
    lines = ["| metric | mean +- sd | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|---|" + "---|" * len(seeds)]
    for key in keys:
        s = sweep["spread"].get(key)
        if s is None:
            continue
        digits = 2 if key.startswith("qat cost") else 4
        cells = [f"{s['mean']:.{digits}f} +- {s['sd']:.{digits}f}", f"{s['min']:.{digits}f}", f"{s['max']:.{digits}f}"]
        cells += [f"{s['by_seed'][x]:.{digits}f}" if x in s["by_seed"] else "" for x in seeds]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    minutes = sweep.get("train_minutes_by_seed", {})
    lines.append("")
    lines.append(f"{sweep['recipe']}, seeds {', '.join(seeds)}, {sweep['isa']} kernels: {sweep['machine_summary']}; "
                 f"training minutes per seed: {', '.join(f'{minutes[x]:.1f}' for x in seeds if x in minutes)}.")
    return "\n".join(lines) + "\n"
