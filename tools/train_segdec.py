"""Train SegDec (quant/models/segdec.py) on a masked dataset: float pre-training, then
Brevitas QAT (W/A bits configurable), and report test-split metrics and wall time.

    OMP_NUM_THREADS=1 PYTHONPATH=. python tools/train_segdec.py --size 256x384 \
        --crop-steps 1500 --float-steps 600 --qat-steps 300 --out /tmp/segdec_runs/final2

Recipe (small, imbalanced sets):
- budget in optimizer steps (not epochs); AdamW, linear warm-up then cosine decay; the model
  kept is the one at the last step (no early stopping; validation is only monitored, or,
  with --select best, the best validation AP after --select-after of the steps).
- class-balanced batches: each sample is a defect image with probability --pos-frac.
- augmentations that keep defects: h/v flips, integer shifts (replicate padding) and
  brightness/contrast jitter, applied identically to image and mask (geometry only).
- loss = seg_weight * pixel loss (BCE + soft Dice on the mask max-pooled to the map
  resolution; only for images whose mask is known) + lambda(t) * image cross-entropy,
  lambda ramping 0 -> 1 over the first --ramp fraction of the float steps (seg first).
- mixed supervision: --mask-frac < 1 keeps the masks of only that fraction of defective
  training images (the others train with their image label only).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quant.data.masks_loader import load_masked_dataset, stratified_split  # noqa: E402
from quant.metrics import recall_at_fpr  # noqa: E402
from quant.models.layers import Bits  # noqa: E402
from quant.models.segdec import create_segdec  # noqa: E402
from quant.models.transfer import load_float_weights  # noqa: E402
from quant.preprocess import to_input  # noqa: E402


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- data / augmentation
def augment(x: torch.Tensor, m: torch.Tensor, rng: np.random.Generator, shift: int, jitter: bool):
    """x float [B,1,H,W] in [0,1], m float [B,1,H,W] in {0,1}: same geometry for both."""
    b = x.shape[0]
    fh, fv = rng.random(b) < 0.5, rng.random(b) < 0.5
    idx_h, idx_v = torch.as_tensor(fh), torch.as_tensor(fv)
    x = torch.where(idx_h[:, None, None, None], x.flip(3), x)
    m = torch.where(idx_h[:, None, None, None], m.flip(3), m)
    x = torch.where(idx_v[:, None, None, None], x.flip(2), x)
    m = torch.where(idx_v[:, None, None, None], m.flip(2), m)
    if shift:
        h, w = x.shape[2:]
        xp = F.pad(x, (shift,) * 4, mode="replicate")
        mp = F.pad(m, (shift,) * 4)
        dy, dx = rng.integers(0, 2 * shift + 1, b), rng.integers(0, 2 * shift + 1, b)
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        m = torch.stack([mp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if jitter:
        gain = torch.as_tensor(1 + (rng.random(b) * 2 - 1) * 0.2, dtype=torch.float32)[:, None, None, None]
        bias = torch.as_tensor((rng.random(b) * 2 - 1) * 0.08, dtype=torch.float32)[:, None, None, None]
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * gain + mean + bias
    return (x.clamp(0, 1) * 255).round() * (1.0 / 255.0), m


def map_target(m: torch.Tensor, map_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Full-resolution mask -> map cells: a cell is defect if any of its pixels is."""
    t = F.max_pool2d(m, stride, stride, ceil_mode=True)
    return t[:, :, :map_size[0], :map_size[1]]


class Sampler:
    def __init__(self, defect: np.ndarray, pos_frac: float, rng: np.random.Generator):
        self.pos, self.neg = np.flatnonzero(defect), np.flatnonzero(~defect)
        self.pos_frac, self.rng = pos_frac, rng

    def batch(self, b: int) -> np.ndarray:
        if self.pos_frac <= 0:  # natural frequencies
            return self.rng.integers(0, len(self.pos) + len(self.neg), b)
        is_pos = self.rng.random(b) < self.pos_frac
        out = np.where(is_pos, self.rng.choice(self.pos, b), self.rng.choice(self.neg, b))
        return out


def crop_batch(ds, idx: np.ndarray, crop: int, rng: np.random.Generator, p_center: float = 0.8):
    """Crops [B,1,crop,crop] of images idx; a defect image's crop is centred near a random
    defect pixel with probability p_center (else anywhere)."""
    n, _, h, w = ds.images.shape
    xs, ms = [], []
    for i in idx:
        cy, cx = rng.integers(crop // 2, h - crop // 2 + 1), rng.integers(crop // 2, w - crop // 2 + 1)
        if ds.defect[i] and ds.has_mask[i] and rng.random() < p_center:
            yy, xx = np.nonzero(ds.masks[i, 0])
            k = rng.integers(len(yy))
            cy = int(np.clip(yy[k] + rng.integers(-crop // 4, crop // 4 + 1), crop // 2, h - crop // 2))
            cx = int(np.clip(xx[k] + rng.integers(-crop // 4, crop // 4 + 1), crop // 2, w - crop // 2))
        y0, x0 = cy - crop // 2, cx - crop // 2
        xs.append(ds.images[i, :, y0:y0 + crop, x0:x0 + crop])
        ms.append(ds.masks[i, :, y0:y0 + crop, x0:x0 + crop])
    return to_input(np.stack(xs)), torch.as_tensor(np.stack(ms), dtype=torch.float32)


def train_crops(model, train_set, args, steps: int, lr: float, seed: int) -> dict:
    """Segmentation-only pre-training on crops (a crop costs (crop^2 / H W) of an image)."""
    rng = np.random.default_rng(seed + 500)
    torch.manual_seed(seed + 500)
    sampler = Sampler(train_set.defect & train_set.has_mask, args.pos_frac, rng)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, args.warmup))
    t0, run, n = time.perf_counter(), 0.0, 0
    for step in range(steps):
        model.train()
        idx = sampler.batch(args.crop_batch)
        x, m = crop_batch(train_set, idx, args.crop, rng)
        x, m = augment(x, m, rng, 0, args.jitter)
        seg = model.forward_seg(x)
        tgt = map_target(m, seg.shape[2:], model.stride)
        loss = seg_loss(seg, tgt, torch.ones(len(idx), dtype=torch.bool), args.seg_loss, args.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run, n = run + float(loss.detach()), n + 1
        if (step + 1) % args.eval_every == 0 or step + 1 == steps:
            log(f"crops step {step + 1}/{steps} seg {run / n:.4f} ({time.perf_counter() - t0:.0f} s)")
            run, n = 0.0, 0
    return {"seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- losses
def seg_loss(logits, target, supervised, kind: str, pos_weight: float):
    if not supervised.any():
        return logits.sum() * 0.0
    lg, tg = logits[supervised], target[supervised]
    out = 0.0
    if "bbce" in kind:  # class-balanced BCE: mean over defect cells + mean over background cells
        ce = F.binary_cross_entropy_with_logits(lg, tg, reduction="none")
        pos = tg > 0.5
        lp = ce[pos].mean() if pos.any() else ce.sum() * 0.0
        out = out + 0.5 * lp + 0.5 * ce[~pos].mean()
    elif "bce" in kind:
        pw = torch.tensor(pos_weight)
        out = out + F.binary_cross_entropy_with_logits(lg, tg, pos_weight=pw)
    if "focal" in kind:
        p = torch.sigmoid(lg)
        ce = F.binary_cross_entropy_with_logits(lg, tg, reduction="none")
        pt = p * tg + (1 - p) * (1 - tg)
        out = out + (((1 - pt) ** 2) * ce * (0.25 * tg + 0.75 * (1 - tg))).sum() / tg.sum().clamp(min=1.0) * 0.1
    if "dice" in kind:
        p = torch.sigmoid(lg)
        inter = (p * tg).sum()
        out = out + 1 - (2 * inter + 1) / (p.sum() + tg.sum() + 1)
    return out


def lr_lambda(total: int, warm_frac: float):
    warm = max(1, int(warm_frac * total))
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model, images: np.ndarray, batch: int = 32):
    model.eval()
    dec, seg = [], []
    for i in range(0, len(images), batch):
        d, s = model(to_input(images[i:i + batch]))
        dec.append(d.float())
        seg.append(s.float())
    return torch.cat(dec).numpy(), torch.cat(seg)


def evaluate(model, data, fprs=(0.0, 0.01, 0.05)) -> dict:
    dec, seg = predict(model, data.images)
    z = dec - dec.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    score = 1 - p[:, 0] if dec.shape[1] > 1 else 1 / (1 + np.exp(-dec[:, 0]))  # class 0 = ok
    pos = data.defect
    out = {"n": int(len(pos)), "n_defect": int(pos.sum()),
           "auroc": float(roc_auc_score(pos, score)), "ap": float(average_precision_score(pos, score))}
    for f in fprs:
        out[f"recall@fpr{f:g}"] = recall_at_fpr(score, pos, f)
    # accuracy at argmax, and at the threshold for 0 false positives etc. (host side)
    pred = score >= 0.5
    out["acc@0.5"] = float((pred == pos).mean())
    out["fp@0.5"], out["fn@0.5"] = int((pred & ~pos).sum()), int((~pred & pos).sum())
    smax = seg.amax(dim=(1, 2, 3)).numpy()
    out["auroc_mapmax"] = float(roc_auc_score(pos, smax))
    # pixel metrics, at map resolution (cells) and at input resolution (bilinear upsampled logits)
    m = torch.as_tensor(data.masks, dtype=torch.float32)
    ms = data.has_mask  # only images whose mask is known
    tgt = map_target(m, seg.shape[2:], data.images.shape[2] // seg.shape[2])
    for name, pr, tg in (("map", seg > 0, tgt > 0.5), ("full", None, m > 0.5)):
        if pr is None:
            pr = torch.cat([F.interpolate(seg[i:i + 32], size=m.shape[2:], mode="bilinear", align_corners=False) > 0
                            for i in range(0, len(seg), 32)])
        pr, tg = pr[ms], tg[ms]
        inter, ps, ts = float((pr & tg).sum()), float(pr.sum()), float(tg.sum())
        out[f"dice_{name}"] = 2 * inter / max(ps + ts, 1)
        out[f"iou_{name}"] = inter / max(ps + ts - inter, 1)
        dpos = torch.as_tensor(pos[ms])
        i_ = (pr & tg).flatten(1).sum(1).float()
        per = 2 * i_ / (pr.flatten(1).sum(1) + tg.flatten(1).sum(1)).clamp(min=1)
        out[f"dice_{name}_per_defect_image"] = float(per[dpos].mean())
    return out


def fmt(m: dict) -> str:
    return (f"AUROC {m['auroc']:.4f} AP {m['ap']:.4f} R@FPR0 {m['recall@fpr0']:.3f} R@1% {m['recall@fpr0.01']:.3f} "
            f"R@5% {m['recall@fpr0.05']:.3f} acc {m['acc@0.5']:.3f} (fp {m['fp@0.5']} fn {m['fn@0.5']}) "
            f"mapmaxAUROC {m['auroc_mapmax']:.4f} Dice map {m['dice_map']:.3f} full {m['dice_full']:.3f} "
            f"IoU full {m['iou_full']:.3f} perimgDice {m['dice_full_per_defect_image']:.3f}")


# ---------------------------------------------------------------- training
def train(model, train_set, val_set, args, steps: int, lr: float, label: str, ramp: float, seed: int,
          freeze_bn_from: float | None = None) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampler = Sampler(train_set.defect, args.pos_frac, rng)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, args.warmup))
    model.detach_decision = args.detach
    best = (-1.0, None, -1)
    hist = []
    t0 = time.perf_counter()
    run = {"seg": 0.0, "dec": 0.0, "n": 0}
    for step in range(steps):
        model.train()
        if freeze_bn_from is not None and step >= freeze_bn_from * steps:
            for mod in model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        idx = sampler.batch(args.batch)
        x = to_input(train_set.images[idx])
        m = torch.as_tensor(train_set.masks[idx], dtype=torch.float32)
        x, m = augment(x, m, rng, args.shift, args.jitter)
        dec, seg = model(x)
        tgt = map_target(m, seg.shape[2:], model.stride)
        sup = torch.as_tensor(train_set.has_mask[idx])
        y = torch.as_tensor(train_set.defect[idx].astype(np.int64))
        ls = seg_loss(seg, tgt, sup, args.seg_loss, args.pos_weight)
        ld = F.cross_entropy(dec, y)
        lam = min(1.0, (step + 1) / max(1, ramp * steps)) if ramp > 0 else 1.0
        loss = args.seg_weight * ls + lam * ld
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run["seg"] += float(ls.detach())
        run["dec"] += float(ld)
        run["n"] += 1
        last = step + 1 == steps
        if (step + 1) % args.eval_every == 0 or last:
            tt = time.perf_counter() - t0
            msg = f"{label} step {step + 1}/{steps} seg {run['seg'] / run['n']:.4f} dec {run['dec'] / run['n']:.4f} ({tt:.0f} s)"
            run = {"seg": 0.0, "dec": 0.0, "n": 0}
            if args.val_every_eval or last:
                vm = evaluate(model, val_set)
                msg += f" | val AUROC {vm['auroc']:.4f} AP {vm['ap']:.4f} Dice {vm['dice_full']:.3f}"
                hist.append({"step": step + 1, "val": vm, "train_s": tt})
                if args.select == "best" and step + 1 >= args.select_after * steps and vm["ap"] >= best[0]:
                    best = (vm["ap"], copy.deepcopy(model.state_dict()), step + 1)
            log(msg)
    if args.select == "best" and best[1] is not None:
        model.load_state_dict(best[1])
        log(f"{label}: kept step {best[2]} (val AP {best[0]:.4f})")
    model.eval()
    return {"history": hist, "kept_step": best[2] if args.select == "best" else steps}


def parse_size(s: str) -> tuple[int, int]:
    h, w = s.lower().split("x")
    return int(h), int(w)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/work/shared/datasets/magnetic_tile")
    p.add_argument("--size", type=parse_size, default=(256, 384))
    p.add_argument("--geometry", default="letterbox", choices=["letterbox", "resize", "raw"])
    p.add_argument("--normalize", default="stretch", choices=["none", "stretch"])
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--context", type=int, default=1, help="extra stride-1 blocks at 1/8")
    p.add_argument("--dec-channels", default="", help="comma list of stride-2 decision conv channels")
    p.add_argument("--avg", default="mean", choices=["mean", "trunc"])
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--abits", type=int, default=4)
    p.add_argument("--head-bits", type=int, default=8)
    p.add_argument("--map-bits", type=int, default=8)
    p.add_argument("--float-steps", type=int, default=600)
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--crop-batch", type=int, default=48)
    p.add_argument("--crop-steps", type=int, default=1500, help="seg-only crop pre-training steps before the float phase")
    p.add_argument("--crop-lr", type=float, default=3e-3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--qat-lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--pos-frac", type=float, default=0.5)
    p.add_argument("--mask-frac", type=float, default=1.0)
    p.add_argument("--seg-loss", default="bbce+dice", help="any of bbce|bce|focal, +dice")
    p.add_argument("--pos-weight", type=float, default=1.0)
    p.add_argument("--seg-weight", type=float, default=1.0)
    p.add_argument("--ramp", type=float, default=0.3)
    p.add_argument("--detach", action="store_true")
    p.add_argument("--shift", type=int, default=16)
    p.add_argument("--no-jitter", dest="jitter", action="store_false")
    p.add_argument("--qat-freeze-bn", type=float, default=None, help="freeze BN from this fraction of QAT")
    p.add_argument("--select", default="last", choices=["last", "best"])
    p.add_argument("--select-after", type=float, default=0.5)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-every-eval", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--float-ckpt", default=None, help="skip float training: load this state_dict")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    data = load_masked_dataset(args.data, args.size, args.geometry, normalize=args.normalize,
                               cache_dir=Path("build") / "_data" / "segdec")
    tr, va, te = stratified_split(data.labels, args.seed)
    train_set, val_set, test_set = data.subset(tr), data.subset(va), data.subset(te)
    if args.mask_frac < 1:
        rng = np.random.default_rng(1000 + args.seed)
        d = np.flatnonzero(train_set.defect & train_set.has_mask)
        drop = rng.choice(d, int(round(len(d) * (1 - args.mask_frac))), replace=False)
        train_set.has_mask = train_set.has_mask.copy()
        train_set.has_mask[drop] = False
    log(f"data {args.size} {args.geometry}: train {len(tr)} ({train_set.defect.sum()} defect, "
        f"{(train_set.defect & train_set.has_mask).sum()} with masks) val {len(va)} test {len(te)}; "
        f"load {time.perf_counter() - t_all:.1f} s; torch threads {torch.get_num_threads()}")
    dec_ch = [int(c) for c in args.dec_channels.split(",") if c]
    kw = dict(num_classes=2, in_size=args.size, width=args.width, context=args.context, dec_channels=dec_ch,
              map_bits=args.map_bits, head_bits=args.head_bits)
    result = {"args": vars(args) | {"size": list(args.size)}}
    fmodel = create_segdec(bits=None, avg="mean", **kw)
    log(f"model: map {fmodel.map_size} decision map {fmodel.feature_size}, "
        f"{sum(p.numel() for p in fmodel.parameters())} params")
    t = time.perf_counter()
    if args.float_ckpt:
        fmodel.load_state_dict(torch.load(args.float_ckpt))
        result["float_train"] = {}
    else:
        if args.crop_steps:
            result["crop_train"] = train_crops(fmodel, train_set, args, args.crop_steps, args.crop_lr, args.train_seed)
        result["float_train"] = train(fmodel, train_set, val_set, args, args.float_steps, args.lr, "float",
                                      args.ramp, args.train_seed)
    result["float_seconds"] = time.perf_counter() - t
    result["float_test"] = evaluate(fmodel, test_set)
    log(f"FLOAT test: {fmt(result['float_test'])}  [{result['float_seconds']:.0f} s]")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        torch.save(fmodel.state_dict(), os.path.join(args.out, "float.pt"))
    if args.qat_steps > 0:
        qmodel = create_segdec(bits=Bits(args.wbits, args.abits, 8), avg=args.avg, **kw)
        load_float_weights(qmodel, fmodel)
        t = time.perf_counter()
        result["qat_train"] = train(qmodel, train_set, val_set, args, args.qat_steps, args.qat_lr, "qat", 0.0,
                                    args.train_seed + 1, freeze_bn_from=args.qat_freeze_bn)
        result["qat_seconds"] = time.perf_counter() - t
        result["qat_test"] = evaluate(qmodel, test_set)
        log(f"QAT W{args.wbits}A{args.abits} test: {fmt(result['qat_test'])}  [{result['qat_seconds']:.0f} s]")
        if args.out:
            torch.save(qmodel.state_dict(), os.path.join(args.out, "qat.pt"))
    result["total_seconds"] = time.perf_counter() - t_all
    log(f"wall time: float {result['float_seconds']:.0f} s, qat {result.get('qat_seconds', 0):.0f} s, "
        f"total {result['total_seconds']:.0f} s (threads {args.threads})")
    if args.out:
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
