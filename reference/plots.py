"""Plots of the parity report (PNG, matplotlib Agg), and the curve points they draw.

Each `plot_*` function takes parts of a report dict (see docs/CONTRACTS.md, "the parity
report"), writes one PNG atomically and returns its path, or returns None without
writing when the report has nothing to draw (no FPGA, no bench, no defect score...).
`curves_for` computes the ROC/PR points stored in report["models"][key]["curves"].
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from core.atomic import atomic_path  # noqa: E402
from quant.metrics import defect_scores, is_defect  # noqa: E402

DPI = 110
RESOURCES = ("LUT", "BRAM_18K", "URAM", "DSP")

# One look per model key, the same in every plot. QAT references are dashed, their
# deployed targets solid in the same hue.
_STYLE = {
    "float": {"color": "#222222", "linestyle": "-", "linewidth": 2.4},
    "qat": {"color": "#1f77b4", "linestyle": "--", "linewidth": 2.0},
    "fpga": {"color": "#ff7f0e", "linestyle": "-", "linewidth": 1.4},
    "npu_qat": {"color": "#2ca02c", "linestyle": "--", "linewidth": 2.0},
    "npu": {"color": "#98df8a", "linestyle": "-", "linewidth": 1.4},
    "gpu_qat": {"color": "#9467bd", "linestyle": "--", "linewidth": 2.0},
    "gpu": {"color": "#c5b0d5", "linestyle": "-", "linewidth": 1.4},
}
_SPARE_COLORS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728"]


def model_style(key: str, index: int = 0) -> dict:
    """Line style of one model key (unknown keys get a spare colour by position)."""
    return dict(_STYLE.get(key) or {"color": _SPARE_COLORS[index % len(_SPARE_COLORS)], "linestyle": "-",
                                    "linewidth": 1.4})


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def _short(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------- curves


def _downsample(*arrays: np.ndarray, max_points: int) -> list[list[float]]:
    n = len(arrays[0])
    if n > max_points:
        idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))  # keeps both ends
        arrays = tuple(a[idx] for a in arrays)
    return [np.round(a.astype(np.float64), 6).tolist() for a in arrays]


def curves_for(logits, labels, ok_index: int | None, max_points: int = 200) -> dict | None:
    """ROC and PR curve points of the defect score P(defect) = 1 - P(ok).

    Returns {"roc": {"fpr": [..], "tpr": [..]}, "pr": {"recall": [..], "precision": [..]}}
    with at most `max_points` points per curve (both ends kept), or None when there is no
    defect score (no ok class, e.g. NEU) or the labels hold only one of ok/defect.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    scores = defect_scores(np.asarray(logits), ok_index)
    if scores is None:
        return None
    positive = is_defect(np.asarray(labels), ok_index)
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, scores)
    precision, recall, _ = precision_recall_curve(positive, scores)
    fpr, tpr = _downsample(fpr, tpr, max_points=max_points)
    recall, precision = _downsample(recall, precision, max_points=max_points)
    return {"roc": {"fpr": fpr, "tpr": tpr}, "pr": {"recall": recall, "precision": precision}}


# ---------------------------------------------------------------------------- models


def plot_confusion(models: dict, classes: list[str], path: Path) -> Path | None:
    """One small heatmap per model (rows: true class, columns: predicted), counts written
    in the cells; colour is the row-normalised rate so classes of any size compare."""
    items = [(k, m) for k, m in models.items() if (m.get("metrics") or {}).get("confusion_matrix")]
    if not items:
        return None
    at_op = all((m.get("operating_point") or {}).get("confusion_matrix") for _, m in items)
    n = len(items)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    k_cls = len(classes)
    cell = max(2.6, 0.45 * k_cls + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + 0.6, cell * nrows + 0.5), squeeze=False)
    names = [_short(c, 12) for c in classes]
    annotate = k_cls <= 10
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (key, m) in zip(axes.flat, items):
        # at the stored operating threshold, what the line decides (argmax without an ok class)
        cm = np.asarray((m["operating_point"] if at_op else m["metrics"])["confusion_matrix"], dtype=float)
        rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(_short(m.get("label", key), 34) + ("\n(at the operating point)" if at_op else ""), fontsize=9)
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        if annotate:
            for i in range(cm.shape[0]):
                for j in range(cm.shape[1]):
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rate[i, j] > 0.55 else "black")
    fig.suptitle("Confusion matrices (test set; colour = fraction of the true class)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _overlay(ax, items, curve, summary, op_point) -> None:
    """One line per model (`curve` = (name, x key, y key)), its summary metric in the
    legend, and a dot at its operating point (metric keys `op_point`)."""
    name, xk, yk = curve
    metric, metric_label = summary
    for i, key, m in items:
        style = model_style(key, i)
        met = m.get("metrics") or {}
        value = met.get(metric)
        label = m.get("label", key) + (f" ({metric_label} {value:.4f})" if _finite(value) else "")
        ax.plot(m["curves"][name][xk], m["curves"][name][yk], label=label, **style)
        if _finite(met.get(op_point[0])) and _finite(met.get(op_point[1])):
            ax.plot(met[op_point[0]], met[op_point[1]], marker="o", color=style["color"], markersize=6,
                    markeredgecolor="black", linestyle="none")


def plot_roc(models: dict, path: Path, report_fpr: float | None = None) -> Path | None:
    """ROC curves of every model with curves, overlaid; each model's operating point marked."""
    items = [(i, k, m) for i, (k, m) in enumerate(models.items()) if m.get("curves")]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    _overlay(ax, items, ("roc", "fpr", "tpr"), ("auroc", "AUROC"), ("op_fpr", "op_recall"))
    if report_fpr:
        ax.axvline(report_fpr, color="grey", linestyle=":", linewidth=1)
        ax.text(report_fpr, 0.02, f" FPR {report_fpr:g}", color="grey", fontsize=7)
    ax.plot([0, 1], [0, 1], color="lightgrey", linewidth=0.8)
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="false positive rate (ok flagged as defect)",
           ylabel="true positive rate (defect recall)", title="ROC (defect vs ok); dots: operating point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_pr(models: dict, path: Path) -> Path | None:
    """Precision-recall curves of every model with curves, overlaid."""
    items = [(i, k, m) for i, (k, m) in enumerate(models.items()) if m.get("curves")]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    _overlay(ax, items, ("pr", "recall", "precision"), ("ap", "AP"), ("op_recall", "op_precision"))
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall (defects found)", ylabel="precision",
           title="Precision-recall (defect vs ok); dots: operating point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_agreement(models: dict, path: Path, min_agreement: float | None = None) -> Path | None:
    """Argmax agreement and max |d| of every non-golden model, vs its reference and vs float."""
    rows = [(k, m) for k, m in models.items() if m.get("agreement_reference") or m.get("agreement_float")]
    if not rows:
        return None
    labels = [_short(m.get("label", k), 34) for k, m in rows]
    x = np.arange(len(rows))
    w = 0.38
    fig, (ax_a, ax_d) = plt.subplots(1, 2, figsize=(max(8.0, 1.5 * len(rows) + 4), 4.2))
    series = [("agreement_reference", "vs its reference", "#1f77b4"), ("agreement_float", "vs float", "#aaaaaa")]
    lows = []
    for j, (field, name, color) in enumerate(series):
        agree = [(m.get(field) or {}).get("argmax_agreement") for _, m in rows]
        diff = [(m.get(field) or {}).get("max_abs_diff") for _, m in rows]
        pos = x + (j - 0.5) * w
        for p, a, d in zip(pos, agree, diff):
            if a is None:
                continue
            lows.append(a)
            ax_a.bar(p, a * 100, w, color=color)
            ax_a.text(p, a * 100, f"{a * 100:.2f}", ha="center", va="bottom", fontsize=7)
            ax_d.bar(p, d, w, color=color)
            ax_d.text(p, d, "0 (exact)" if d == 0 else f"{d:.3g}", ha="center", va="bottom", fontsize=7)
    floor = min(lows + ([min_agreement] if min_agreement else []))
    ax_a.set_ylim(max(0.0, (floor * 100) - max(1.0, (100 - floor * 100) * 0.5)), 100.4)
    handles = [Patch(color=c, label=n) for _, n, c in series]
    if min_agreement:
        handles.append(ax_a.axhline(min_agreement * 100, color="#d62728", linestyle="--", linewidth=1,
                                    label=f"gate: {min_agreement:.2%} vs reference"))
    ax_a.set(ylabel="argmax agreement (%)", title="Argmax agreement (zoomed axis)")
    ax_d.set(ylabel="max |logit difference|", title="Largest logit difference")
    for ax in (ax_a, ax_d):
        ax.set_xticks(x, labels, rotation=25, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


# ---------------------------------------------------------------------------- FPGA


def plot_fpga_resources(fpga: dict | None, path: Path, top: int = 8) -> Path | None:
    """Left: each resource as % of the part, stacked by layer (the `top` largest LUT users,
    the rest as "other"), against the budget line. Right: LUT per layer."""
    if not fpga or not fpga.get("per_layer"):
        return None
    layers = fpga["per_layer"]
    cap = fpga.get("capacity") or {}
    budget = fpga.get("budget")
    res = [r for r in RESOURCES if cap.get(r)]
    by_lut = sorted(layers, key=lambda l: l.get("LUT", 0) or 0, reverse=True)
    shown, rest = by_lut[:top], by_lut[top:]
    cmap = plt.get_cmap("tab10")
    height = max(4.0, 0.22 * len(layers) + 1.5)
    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1, 1.2]})
    y = np.arange(len(res))
    left = np.zeros(len(res))
    groups = [(l["name"], [l]) for l in shown] + ([("other", rest)] if rest else [])
    for gi, (name, members) in enumerate(groups):
        pct = np.array([100 * sum(m.get(r, 0) or 0 for m in members) / cap[r] for r in res])
        ax_s.barh(y, pct, left=left, color="#cccccc" if name == "other" else cmap(gi % 10), label=_short(name, 26),
                  edgecolor="white", linewidth=0.5)
        left += pct
    total = fpga.get("resources") or {}
    for yi, r in enumerate(res):
        used = total.get(r, left[yi] * cap[r] / 100)
        ax_s.text(left[yi], yi, f" {100 * used / cap[r]:.1f}%", va="center", fontsize=7)
    if budget:
        ax_s.axvline(100 * budget, color="#d62728", linestyle="--", linewidth=1.2, label=f"budget {budget:.0%}")
    ax_s.axvline(100, color="black", linewidth=0.8, label="capacity")
    ax_s.set_yticks(y, res)
    ax_s.invert_yaxis()
    ax_s.set(xlim=(0, 108), xlabel=f"% of {fpga.get('part', 'part')} capacity",
             title="Resources by layer vs capacity and budget")
    ax_s.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    ax_s.grid(axis="x", alpha=0.3)

    yl = np.arange(len(layers))
    lut = [l.get("LUT", 0) or 0 for l in layers]
    ops = list(dict.fromkeys(l.get("op_type", "?") for l in layers))
    ax_l.barh(yl, lut, color=[cmap(ops.index(l.get("op_type", "?")) % 10) for l in layers])
    ax_l.legend(handles=[Patch(color=cmap(i % 10), label=_short(o, 30)) for i, o in enumerate(ops)], fontsize=6,
                loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    ax_l.set_yticks(yl, [_short(l["name"], 30) for l in layers], fontsize=7)
    ax_l.invert_yaxis()
    ax_l.set(xlabel="LUT", title="LUT per layer (dataflow order)")
    ax_l.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_fpga_cycles(fpga: dict | None, path: Path) -> Path | None:
    """Cycles per image for each layer; the slowest (the bottleneck) in red, against the
    cycle budget that the target fps allows at the clock."""
    if not fpga or not fpga.get("per_layer"):
        return None
    layers = fpga["per_layer"]
    cycles = np.array([l.get("cycles", 0) or 0 for l in layers], dtype=float)
    worst = int(cycles.argmax())
    colors = ["#d62728" if i == worst else "#1f77b4" for i in range(len(layers))]
    fig, ax = plt.subplots(figsize=(8.5, max(4.0, 0.22 * len(layers) + 1.5)))
    y = np.arange(len(layers))
    ax.barh(y, cycles, color=colors)
    ax.set_yticks(y, [_short(l["name"], 30) for l in layers], fontsize=7)
    ax.invert_yaxis()
    ax.text(cycles[worst], worst, f" bottleneck: {int(cycles[worst]):,} cycles", va="center", fontsize=7,
            color="#d62728")
    clock, target = fpga.get("clock_mhz"), fpga.get("target_fps")
    if clock and target:
        allowed = clock * 1e6 / target
        ax.axvline(allowed, color="black", linestyle="--", linewidth=1)
        ax.text(allowed, len(layers) - 0.5, f" {target:,.0f} fps @ {clock:g} MHz\n = {allowed:,.0f} cycles",
                fontsize=7, va="bottom")
    est = fpga.get("est_fps")
    title = "Cycles per image by layer" + (f" (estimate: {est:,.0f} fps)" if _finite(est) else "")
    ax.set(xlabel="cycles per image (estimate)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_fpga_stages(fpga: dict | None, path: Path) -> Path | None:
    """Argmax agreement and max |d| after each FINN lowering stage (vs the QAT model)."""
    stages = (fpga or {}).get("stages") or []
    if not stages:
        return None
    names = [s["stage"] for s in stages]
    x = np.arange(len(stages))
    agree = np.array([100 * s["argmax_agreement"] for s in stages])
    diff = [s["max_abs_diff"] for s in stages]
    fig, (ax_a, ax_d) = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(stages) + 4), 3.8))
    colors = ["#2ca02c" if a >= 100 and d == 0 else "#ff7f0e" if a >= 100 else "#d62728"
              for a, d in zip(agree, diff)]
    ax_a.bar(x, agree, color=colors)
    ax_a.set_ylim(max(0.0, agree.min() - max(1.0, (100 - agree.min()) * 0.5)), 100.4)
    for xi, a in zip(x, agree):
        ax_a.text(xi, a, f"{a:.2f}", ha="center", va="bottom", fontsize=7)
    ax_d.bar(x, diff, color=colors)
    for xi, d, s in zip(x, diff, stages):
        txt = "0 (exact)" if d == 0 else f"{d:.3g}"
        if s.get("first_divergent_node"):
            txt += f"\nat {_short(s['first_divergent_node'], 18)}"
        ax_d.text(xi, d, txt, ha="center", va="bottom", fontsize=7)
    fig.legend(handles=[Patch(color="#2ca02c", label="bit-exact"), Patch(color="#ff7f0e", label="same argmax, |d| > 0"),
                        Patch(color="#d62728", label="argmax differs")], fontsize=7, loc="lower center", ncol=3)
    ax_a.set(ylabel="argmax agreement (%)", title="FPGA stages: argmax agreement")
    ax_d.set(ylabel="max |logit difference|", title="FPGA stages: largest logit difference")
    if max(diff) > 0:
        ax_d.set_ylim(0, max(diff) * 1.3)
    for ax in (ax_a, ax_d):
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


# ---------------------------------------------------------------------------- bench


def bench_series_name(r: dict) -> str:
    parts = [r["runtime"], r.get("precision"), r.get("device")]
    if r.get("mode") == "async":
        parts.append("async")
    return " ".join(str(p) for p in parts if p)


def plot_throughput(bench: dict | None, path: Path) -> Path | None:
    """Images/s per runtime, grouped by batch size (log axis); estimates hatched and
    labelled "estimate"."""
    results = (bench or {}).get("results") or []
    if not results:
        return None
    batches = sorted({r["batch"] for r in results})
    series = list(dict.fromkeys(bench_series_name(r) for r in results))
    cmap = plt.get_cmap("tab10")
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(batches) * max(1, len(series) / 2) + 3), 4.6))
    for si, name in enumerate(series):
        for bi, b in enumerate(batches):
            for r in results:
                if bench_series_name(r) != name or r["batch"] != b:
                    continue
                est = r.get("kind") == "estimate"
                xpos = bi - 0.4 + (si + 0.5) * w
                ax.bar(xpos, r["images_per_s"], w * 0.95, color=cmap(si % 10), hatch="//" if est else None,
                       edgecolor="black" if est else "none", linewidth=0.6)
                ax.text(xpos, r["images_per_s"], f"{r['images_per_s']:,.0f}" + ("\nestimate" if est else ""),
                        ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ips = [r["images_per_s"] for r in results if r["images_per_s"] > 0]
    if ips:
        ax.set_ylim(min(ips) / 3, max(ips) * 4)
    ax.set(ylabel="images / s (log)", title="Throughput" + (f" on {_cpu_name(bench['machine'])}" if bench.get("machine") else ""))
    handles = [Patch(color=cmap(i % 10), label=n) for i, n in enumerate(series)]
    if any(r.get("kind") == "estimate" for r in results):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="estimate (not measured)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _cpu_name(ident) -> str:
    """CPU and its INT8 dot-product kernel from a bench file's machine record."""
    return f"{ident.get('cpu', '?')} ({ident.get('int8_dot', '?')})" if isinstance(ident, dict) else str(ident)
