"""Where the classifier looks: Grad-CAM heatmaps (captum) over defect images, as overlays.

The heatmap is taken on the deployed quantized model (the Brevitas QAT model; the float
model for INT8-only architectures) at its last feature map, the input of the global pool.
For these models (global average pool, then one linear layer) Grad-CAM equals the original
CAM of Zhou et al. up to a positive factor. Brevitas passes QuantTensors between layers,
which captum cannot hook, so `CamView` taps the feature values with an nn.Identity and
hands the unchanged QuantTensor on: the logits are exactly the model's.

Written to <report>/cams/<class>.png, one figure per defect class with a few test images
(correctly classified first, then one the model got wrong, if any).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quant.preprocess import to_input

PER_CLASS = 4


class CamView(nn.Module):
    """`model` split at its last feature map, with a plain-tensor tap captum can hook."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def forward(self, x):
        features = self.model.forward_features(x)
        if hasattr(features, "set") and hasattr(features, "value"):  # a Brevitas QuantTensor
            return torch.as_tensor(self.model.forward_head(features.set(value=self.tap(features.value))))
        return self.model.forward_head(self.tap(features))


def grad_cam(model: nn.Module, pixels: np.ndarray, classes: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Heatmaps [N, H, W] in [0, 1] (each map scaled to its own maximum) of `classes` [N] for
    uint8 `pixels` [N, 1, H, W], upsampled bilinearly to the input size."""
    from captum.attr import LayerAttribution, LayerGradCam

    view = CamView(model).eval()
    cam = LayerGradCam(view, view.tap)
    h, w = pixels.shape[-2:]
    out = []
    for start in range(0, len(pixels), batch_size):
        x = to_input(pixels[start:start + batch_size])
        target = torch.as_tensor(classes[start:start + batch_size], dtype=torch.long)
        a = cam.attribute(x, target=target, relu_attributions=True)
        a = LayerAttribution.interpolate(a, (h, w), interpolate_mode="bilinear")[:, 0].detach()
        peak = a.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        out.append((a / peak).numpy())
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


@dataclass(frozen=True)
class CamSample:
    index: int  # position in the test set
    label: int
    predicted: int
    confidence: float  # softmax probability of the predicted class


def pick_samples(labels: np.ndarray, logits: np.ndarray, class_index: int, per_class: int = PER_CLASS) -> list[CamSample]:
    """Up to `per_class` test images of one class, in test order: correctly classified ones,
    and the first misclassified one (if any) in the last slot."""
    prob = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), 1).numpy()
    pred = prob.argmax(1)
    members = np.flatnonzero(labels == class_index)
    right = [int(i) for i in members if pred[i] == class_index]
    wrong = [int(i) for i in members if pred[i] != class_index]
    chosen = right[:per_class - 1] + wrong[:1] if wrong else right[:per_class]
    if len(chosen) < per_class:  # few right ones: fill with more wrong ones
        chosen += [i for i in wrong if i not in chosen][:per_class - len(chosen)]
    return [CamSample(i, int(labels[i]), int(pred[i]), float(prob[i, pred[i]])) for i in sorted(chosen)]


def plot_overlays(pixels: np.ndarray, heat: np.ndarray, samples: list[CamSample], class_names, title: str,
                  path: Path, truth: np.ndarray | None = None) -> Path:
    """One row: each image in gray with its heatmap over it (jet, half transparent) and,
    where given, the ground-truth mask's outline (white)."""
    from reference.plots import _save, plt

    n = len(samples)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for j, (ax, s, img, hm) in enumerate(zip(axes[0], samples, pixels, heat)):
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        ax.imshow(hm, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if truth is not None and truth[j].any():
            ax.contour(truth[j].astype(float), levels=[0.5], colors="white", linewidths=0.8)
        ok = s.predicted == s.label
        ax.set_title(f"#{s.index}: {'' if ok else 'WRONG '}{class_names[s.predicted]}\np={s.confidence:.2f}",
                     fontsize=8, color="black" if ok else "red")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return _save(fig, path)


def _per_defect_class(labels, logits, class_names, ok_index, draw) -> list[dict]:
    """For every defect class with test images: draw(class index, name, image indices,
    samples) -> (png path, extra entry keys); returns [{class, file, samples, ...}]."""
    entries = []
    for k, name in enumerate(class_names):
        if k == ok_index:
            continue
        samples = pick_samples(labels, logits, k)
        if not samples:
            continue
        path, extra = draw(k, name, np.array([s.index for s in samples]), samples)
        entries.append({"class": name, "file": f"cams/{path.name}", **extra,
                        "samples": [{"index": s.index, "predicted": class_names[s.predicted],
                                     "confidence": round(s.confidence, 4)} for s in samples]})
    return entries


def write_cam_overlays(model: nn.Module, model_label: str, pixels: np.ndarray, labels: np.ndarray,
                       logits: np.ndarray, class_names, ok_index: int | None, out_dir: Path) -> list[dict]:
    """Overlays for every defect class into out_dir; returns [{class, file, samples}] for the report."""
    out_dir = Path(out_dir)

    def draw(k, name, idx, samples):
        heat = grad_cam(model, pixels[idx], np.full(len(idx), k))
        return plot_overlays(pixels[idx], heat, samples, class_names,
                             f"{name}: Grad-CAM of {model_label} for class '{name}'", out_dir / f"{_slug(name)}.png"), {}

    entries = _per_defect_class(labels, logits, class_names, ok_index, draw)
    keep = {Path(e["file"]).name for e in entries}
    for stale in out_dir.glob("*.png") if out_dir.is_dir() else []:
        if stale.name not in keep:
            stale.unlink()
    return entries


def write_map_overlays(maps: np.ndarray, model_label: str, pixels: np.ndarray, labels: np.ndarray,
                       logits: np.ndarray, masks: np.ndarray, class_names, ok_index: int | None, out_dir: Path,
                       prefix: str) -> list[dict]:
    """A localising model's own defect map (sigmoid of its logit map, upsampled to the image)
    over the image, the ground-truth outline beside it, for every defect class; returns
    [{class, file, samples, source}] as write_cam_overlays."""
    from quant.train_seg import defect_probability

    def draw(k, name, idx, samples):
        heat = defect_probability(maps[idx], pixels.shape[2:])
        return plot_overlays(pixels[idx], heat, samples, class_names,
                             f"{name}: defect map of {model_label} (white: ground truth)",
                             Path(out_dir) / f"{prefix}_{_slug(name)}.png", truth=masks[idx, 0]), {"source": model_label}

    return _per_defect_class(labels, logits, class_names, ok_index, draw)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
