"""Training of the segmentation-supervised models (quant/models/segdec.py): a defect map
learned from pixel masks and an image decision that reads it (Tabernik et al. 2019; Bozic
et al. 2021, "Mixed supervision for surface-defect detection", arXiv 2104.06064).

    fit_segdec(model, splits, cfg, steps, lr, seed, label, crop_steps=0, freeze_bn_from=None) -> history
    predict_maps(model, imageset_or_pixels, float64=False) -> (logits [N, C], maps [N, 1, h, w])
    pixel_metrics(maps, masks, known, stride) -> Dice / IoU / region recall at input resolution

What makes it work on small, imbalanced sets (measured on magnetic tile, docs/SEGDEC_RESULTS.md):
- budgets in optimizer steps, not epochs (a 300-image set gives a handful of steps an epoch);
  linear warm-up then cosine; the state kept is the best validation AP in the second half
  of the steps (ties: the later), never one from the warm-up;
- class-balanced batches: each sample is a defect image with probability
  cfg.defect_batch_fraction;
- first, `crop_steps` of map-only training on crops (cfg.crop_size) centred near a defect
  pixel 80 % of the time: a crop costs a fraction of an image and almost always carries
  pixel supervision;
- the map loss: class-balanced BCE (mean over defect cells + mean over background cells) +
  soft Dice, against the mask max-pooled to the map's cells, only for images whose mask is
  known (mixed supervision: the others train on their image label alone); the decision loss
  (cross-entropy) ramps in over the first 30 % of the steps;
- augmentations that keep defects: flips, shifts of up to 1/16 of the size (replicated
  border), brightness/contrast jitter; the mask follows the geometry.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.console import console
from quant import metrics
from quant.preprocess import to_input
from quant.train import check_finite, forward_outputs, seed_everything, warmup_cosine
from quant.weight_average import WeightAverage

RAMP = 0.3  # fraction of the steps over which the decision loss ramps in
KEEP_FROM = 0.5  # the kept state is the best validation AP from this fraction of the steps on
CENTRED = 0.8  # share of defect crops centred near a defect pixel


class SegData:
    """A split as arrays: uint8 pixels [N,1,H,W], bool masks [N,1,H,W], mask known [N], defect [N]."""

    def __init__(self, imageset, ok_index: int | None):
        self.images = imageset.array()
        self.masks, self.known = imageset.mask_array()
        self.labels = imageset.labels
        self.defect = imageset.labels != ok_index if ok_index is not None else imageset.labels > 0


def map_target(masks: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Full-resolution masks [B,1,H,W] -> map cells: a cell is defect if any of its pixels is."""
    t = F.max_pool2d(masks, stride, stride, ceil_mode=True)
    return t[:, :, :map_size[0], :map_size[1]]


def seg_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE + soft Dice over the images whose mask is known."""
    if not known.any():
        return logits.sum() * 0.0
    lg, tg = logits[known], target[known]
    ce = F.binary_cross_entropy_with_logits(lg, tg, reduction="none")
    pos = tg > 0.5
    lp = ce[pos].mean() if pos.any() else ce.sum() * 0.0
    balanced = 0.5 * lp + 0.5 * ce[~pos].mean()
    p = torch.sigmoid(lg)
    dice = 1 - (2 * (p * tg).sum() + 1) / (p.sum() + tg.sum() + 1)
    return balanced + dice


def augment(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator, shift: int):
    """Flips, integer shifts (replicated border) and brightness/contrast jitter, the geometry
    applied identically to images x [B,1,H,W] in [0,1] and masks m; re-quantized to 8 bits."""
    b = x.shape[0]
    for axis in (3, 2):
        flip = torch.as_tensor(rng.random(b) < 0.5)[:, None, None, None]
        x, m = torch.where(flip, x.flip(axis), x), torch.where(flip, m.flip(axis), m)
    if shift:
        h, w = x.shape[2:]
        xp, mp = F.pad(x, (shift,) * 4, mode="replicate"), F.pad(m, (shift,) * 4)
        dy, dx = rng.integers(0, 2 * shift + 1, b), rng.integers(0, 2 * shift + 1, b)
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        m = torch.stack([mp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    gain = torch.as_tensor(1 + (rng.random(b) * 2 - 1) * 0.2, dtype=torch.float32)[:, None, None, None]
    bias = torch.as_tensor((rng.random(b) * 2 - 1) * 0.08, dtype=torch.float32)[:, None, None, None]
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * gain + mean + bias
    return (x.clamp(0, 1) * 255).round() * (1.0 / 255.0), m


def balanced_batch(defect: np.ndarray, b: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    pos, neg = np.flatnonzero(defect), np.flatnonzero(~defect)
    if not len(pos) or not len(neg):
        return rng.integers(0, len(defect), b)
    return np.where(rng.random(b) < fraction, rng.choice(pos, b), rng.choice(neg, b))


def crop_batch(data: SegData, idx: np.ndarray, crop: tuple[int, int], rng: np.random.Generator):
    """Crops [B,1,ch,cw]; a defect image's crop is centred near one of its defect pixels
    (CENTRED of the time), anything else anywhere."""
    _, _, h, w = data.images.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    xs, ms = [], []
    for i in idx:
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        if data.known[i] and data.masks[i, 0].any() and rng.random() < CENTRED:
            yy, xx = np.nonzero(data.masks[i, 0])
            k = rng.integers(len(yy))
            y0 = int(np.clip(yy[k] - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, h - ch))
            x0 = int(np.clip(xx[k] - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, w - cw))
        xs.append(data.images[i, :, y0:y0 + ch, x0:x0 + cw])
        ms.append(data.masks[i, :, y0:y0 + ch, x0:x0 + cw])
    return to_input(np.stack(xs)), torch.as_tensor(np.stack(ms), dtype=torch.float32)


def _set_bn_eval(model) -> None:
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()


def train_crops(model, data: SegData, cfg, steps: int, lr: float, seed: int, label: str) -> dict:
    """Map-only training on crops (model.forward_seg), before whole-image training."""
    rng = np.random.default_rng(seed + 500)
    torch.manual_seed(seed + 500)
    supervised = data.defect & data.known
    if steps == 0 or not supervised.any():
        return {"steps": 0}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, steps)
    crop = (cfg.crop_size, cfg.crop_size)
    t0, run = time.perf_counter(), []
    batch = max(cfg.batch_size * 3, 8)  # a crop costs a fraction of an image
    for step in range(steps):
        model.train()
        idx = balanced_batch(supervised, batch, cfg.defect_batch_fraction, rng)
        idx = np.where(data.known[idx], idx, rng.choice(np.flatnonzero(supervised), batch))
        x, m = crop_batch(data, idx, crop, rng)
        x, m = augment(x, m, rng, 0)
        seg = model.forward_seg(x)
        loss = seg_loss(seg, map_target(m, seg.shape[2:], model.stride), torch.ones(len(idx), dtype=torch.bool))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        run.append(float(loss.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            console.print(f"{label} crops {step + 1}/{steps}: map loss {np.mean(run):.4f} ({time.perf_counter() - t0:.0f} s)")
            run = []
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 1)}


def fit_segdec(model, splits, cfg, steps: int, lr: float, seed: int, label: str, crop_steps: int = 0,
               freeze_bn_from: float | None = None, ema: float = 0.0) -> dict:
    """Train a two-output model in place (see the module doc). freeze_bn_from: fraction of
    the steps after which BatchNorm statistics freeze (QAT); ema: decay of the weight average
    that is validated and kept (quant.weight_average; 0: the raw weights). Returns the history."""
    torch.set_num_threads(cfg.threads)
    seed_everything(seed)
    history = {"label": label, "steps": [], "crops": {}}
    train, val = SegData(splits.train, splits.ok_index), splits.val
    if not train.known.any():
        console.print(f"[yellow]{label}: no pixel masks in the training split: the map learns from image labels only[/yellow]")
    history["crops"] = train_crops(model, train, cfg, crop_steps, lr, seed, label)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, steps)
    shift = max(train.images.shape[2], train.images.shape[3]) // 16
    best, t0, run = (-1.0, None, 0), time.perf_counter(), {"map": [], "decision": []}
    avg = WeightAverage(model, ema) if ema else None
    for step in range(steps):
        model.train()
        if freeze_bn_from is not None and step >= freeze_bn_from * steps:
            _set_bn_eval(model)
        idx = balanced_batch(train.defect, cfg.batch_size, cfg.defect_batch_fraction, rng)
        x = to_input(train.images[idx])
        m = torch.as_tensor(train.masks[idx], dtype=torch.float32)
        x, m = augment(x, m, rng, shift)
        logits, seg = model(x)
        ls = seg_loss(seg, map_target(m, seg.shape[2:], model.stride), torch.as_tensor(train.known[idx]))
        ld = F.cross_entropy(logits, torch.as_tensor(train.labels[idx]))
        loss = cfg.seg_weight * ls + min(1.0, (step + 1) / max(1, RAMP * steps)) * ld
        check_finite(loss, scheduler.get_last_lr()[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if avg is not None:
            avg.update(model)
        run["map"].append(float(ls.detach()))
        run["decision"].append(float(ld.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            evaluated = model if avg is None else avg.model(model)
            val_logits, _ = predict_maps(evaluated, val)
            vm = metrics.evaluate(val_logits, val.labels, splits.ok_index, report_fpr=cfg.report_fpr)
            score = vm.get("ap", vm["f1"])
            entry = {"step": step + 1, "map_loss": float(np.mean(run["map"])), "decision_loss": float(np.mean(run["decision"])),
                     "val": {k: v for k, v in vm.items() if k != "confusion_matrix"}, "seconds": round(time.perf_counter() - t0, 1)}
            history["steps"].append(entry)
            console.print(f"{label} step {step + 1}/{steps}: map {entry['map_loss']:.4f} decision {entry['decision_loss']:.4f} "
                          f"val AP {vm.get('ap', float('nan')):.4f} AUROC {vm.get('auroc', float('nan')):.4f} "
                          f"({entry['seconds']:.0f} s)")
            run = {"map": [], "decision": []}
            if step + 1 >= KEEP_FROM * steps and score >= best[0]:
                best = (score, copy.deepcopy(evaluated.state_dict()), step + 1)
    if best[1] is not None:
        model.load_state_dict(best[1])
    history["kept_step"], history["best_val_score"] = best[2], best[0]
    model.eval()
    return history


def predict_maps(model, imageset, batch_size: int = 32, float64: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], defect-logit maps [N, 1, h, w]) of a two-output model over an ImageSet
    (or uint8 pixels [N, 1, H, W]), in order; float64 as quant.train.forward_outputs."""
    logits, maps = forward_outputs(model, imageset, batch_size, float64)
    return logits, maps


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Defect-logit maps [N,1,h,w] -> [N,1,H,W] (bilinear), the localisation at input resolution."""
    out = [F.interpolate(torch.as_tensor(maps[i:i + 32], dtype=torch.float32), size=size, mode="bilinear",
                         align_corners=False).numpy() for i in range(0, len(maps), 32)]
    return np.concatenate(out) if out else np.zeros((0, 1, *size), np.float32)


def defect_probability(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """P(defect) per input pixel [N, H, W]: the sigmoid of the upsampled logit map (overlays)."""
    return 1 / (1 + np.exp(-upsample(maps, size)[:, 0]))


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, known: np.ndarray) -> dict:
    """Pixel Dice and IoU (global over the images whose mask is known, the upsampled map
    thresholded at logit 0), per-defect-image mean Dice and region recall (share of the
    ground-truth connected regions that the predicted mask touches)."""
    from scipy import ndimage

    if not known.any():
        return {"n_masks": 0}
    pred = upsample(maps[known], masks.shape[2:]) > 0
    gt = masks[known].astype(bool)
    inter, ps, ts = float((pred & gt).sum()), float(pred.sum()), float(gt.sum())
    per_image, regions, hit = [], 0, 0
    for p, g in zip(pred[:, 0], gt[:, 0]):
        if g.any():
            per_image.append(2 * float((p & g).sum()) / max(float(p.sum() + g.sum()), 1))
            lab, k = ndimage.label(g)
            regions += k
            hit += len(set(np.unique(lab[p & g])) - {0})
    return {"n_masks": int(known.sum()), "dice": 2 * inter / max(ps + ts, 1.0), "iou": inter / max(ps + ts - inter, 1.0),
            "dice_per_defect_image": float(np.mean(per_image)) if per_image else float("nan"),
            "region_recall": hit / regions if regions else float("nan"), "regions": regions}
