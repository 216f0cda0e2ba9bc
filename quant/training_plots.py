"""Training curves as PNG (loss and validation score per epoch, one line per run)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.atomic import atomic_path  # noqa: E402


def plot_curves(histories: list[dict], path: Path) -> Path:
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
    for h in histories:
        ep = [e["epoch"] for e in h["epochs"]]
        if not ep:
            continue
        ax_loss.plot(ep, [e["train_loss"] for e in h["epochs"]], marker="o", label=h["label"])
        ax_val.plot(ep, [e["val"]["accuracy"] for e in h["epochs"]], marker="o", label=f"{h['label']} accuracy")
        if "ap" in h["epochs"][0]["val"]:
            ax_val.plot(ep, [e["val"]["ap"] for e in h["epochs"]], linestyle="--", label=f"{h['label']} AP")
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_val.set(title="validation", xlabel="epoch")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
