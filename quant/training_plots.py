"""Training curves as PNG (loss and validation score per epoch, one line per run)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.atomic import atomic_path  # noqa: E402


def plot_curves(histories: list[dict], path: Path) -> Path:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
    unit = "epoch"
    for h in histories:
        rows = h.get("epochs")
        if rows is None:  # step budgets (quant/train_seg.py): one row per validation
            unit, rows = "step", h.get("steps", [])
        if not rows:
            continue
        x = [e[unit] for e in rows]
        loss = [e["train_loss"] if "train_loss" in e else e["map_loss"] + e["decision_loss"] for e in rows]
        ax_loss.plot(x, loss, marker="o", label=h["label"])
        ax_val.plot(x, [e["val"]["accuracy"] for e in rows], marker="o", label=f"{h['label']} accuracy")
        if "ap" in rows[0]["val"]:
            ax_val.plot(x, [e["val"]["ap"] for e in rows], linestyle="--", label=f"{h['label']} AP")
    ax_loss.set(title="training loss", xlabel=unit)
    ax_val.set(title="validation", xlabel=unit)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
