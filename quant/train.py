"""The training loop shared by float pre-training, Brevitas QAT and NNCF QAT.

Reads top to bottom like torchvision's reference script:
data -> loss -> optimizer -> schedule -> loop (train_one_epoch, evaluate) -> best state.
"""
from __future__ import annotations

import copy
import math
import random
import time

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, WeightedRandomSampler

from core.console import console
from core.errors import UserError
from quant import distributed, metrics
from quant.augment import augment_batch
from quant.losses import Distilled, make_loss
from quant.preprocess import to_input
from quant.weight_average import WeightAverage


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _loader(imageset, cfg, gen: torch.Generator, train: bool) -> DataLoader:
    sampler = None
    shuffle = False
    if train and cfg.sampler == "weighted":
        counts = np.bincount(imageset.labels, minlength=int(imageset.labels.max()) + 1).astype(np.float64)
        w = 1.0 / np.sqrt(np.maximum(counts[imageset.labels], 1))  # sqrt: balance without overfitting the rare class
        sampler = WeightedRandomSampler(torch.as_tensor(w), num_samples=len(imageset), replacement=True, generator=gen)
    elif train:
        shuffle = True
    if train and distributed.world_size() > 1:  # every rank draws the global sequence, takes its share
        sampler = sampler or torch.utils.data.RandomSampler(imageset, generator=gen)
        return DataLoader(imageset, batch_sampler=distributed.ShardedBatchSampler(sampler, cfg.batch_size))
    return DataLoader(imageset, batch_size=cfg.batch_size if train else 256, sampler=sampler,
                      shuffle=shuffle, generator=gen if shuffle else None, num_workers=0)


@torch.no_grad()
def forward_outputs(model, imageset, batch_size: int = 256, float64: bool = False) -> list[np.ndarray]:
    """Every output of `model` over an ImageSet (or uint8 pixels [N, 1, H, W]), in order, one
    array per output (a two-output model: decision logits and defect map): float32, or
    float64 computed in float64 (a copy of the model), the reference an integer target must
    match exactly."""
    if float64:
        model = copy.deepcopy(model).double()
    model.eval()
    if isinstance(imageset, np.ndarray):
        batches = (imageset[i:i + batch_size] for i in range(0, len(imageset), batch_size))
    else:
        batches = (pixels for pixels, _ in DataLoader(imageset, batch_size=batch_size, shuffle=False, num_workers=0))
    out = []
    for pixels in batches:
        x = to_input(pixels)
        y = model(x.double() if float64 else x)
        out.append([torch.as_tensor(t).numpy() for t in (y if isinstance(y, tuple) else (y,))])
    dtype = np.float64 if float64 else np.float32
    return [np.concatenate(parts).astype(dtype) for parts in zip(*out)]


def predict(model, imageset, batch_size: int = 256, float64: bool = False) -> np.ndarray:
    """Logits [N, C] of `model` (of a two-output model: its decision) over an ImageSet or
    uint8 pixels; float64 as forward_outputs."""
    return forward_outputs(model, imageset, batch_size, float64)[0]


def check_finite(loss: torch.Tensor, lr: float) -> None:
    """A NaN/inf loss: no later step recovers, and NaN weights must not be saved."""
    if not torch.isfinite(loss):
        raise UserError(f"training diverged: the loss is {float(loss)} at learning rate {lr:.3g} "
                        "(weights or inputs overflowed): lower train.lr (train.qat_lr for QAT), or change train.loss")


def _score(m: dict) -> float:
    # validation criterion for early stopping: AP for defect/ok tasks, else macro F1
    return m.get("ap", m["f1"]) if not math.isnan(m.get("ap", 0.0)) else m["f1"]


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy: breaks ties of the criterion (a small validation set saturates it)."""
    return float(torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels, dtype=torch.long)))


def fit(model, splits, cfg, epochs: int, lr: float, seed: int, label: str, freeze_bn_from: int | None = None,
        teacher=None, ema: float = 0.0) -> dict:
    """Train `model` in place; keep the state with the best validation score (ties: the
    lower validation cross-entropy).

    freeze_bn_from: from this epoch on (0-based) BatchNorm layers use and keep their running
    statistics, as PyTorch's and TensorFlow's QAT recipes do for the last epochs of QAT.
    teacher: a trained (float) model QAT also learns from, by cfg.qat_distill
    (quant.losses.Distilled); None: the labels alone.
    ema: decay of an exponential moving average of the weights (quant.weight_average) that is
    validated and kept instead of the raw weights; 0: none.
    Returns the history: per-epoch train loss and validation metrics.
    """
    torch.set_num_threads(cfg.threads)
    gen = seed_everything(seed)
    history = {"label": label, "epochs": []}
    if epochs == 0:
        return history
    loader = _loader(splits.train, cfg, gen, train=True)
    num_classes = len(splits.class_names)
    criterion = make_loss(cfg.loss, splits.train.labels, num_classes)
    if teacher is not None and cfg.qat_distill > 0:
        criterion = Distilled(criterion, cfg.qat_distill, cfg.qat_distill_temperature)
        teacher.eval()
    else:
        teacher = None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps=epochs * len(loader))
    warm_steps = warmup_steps(epochs * len(loader))
    best, best_state, since_best = (-1.0, -math.inf), None, 0
    avg = WeightAverage(model, ema) if ema else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label}", total=epochs * len(loader), info="")

        def tick():
            progress.advance(task)
            if avg is not None:
                avg.update(model)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            frozen = freeze_bn_from is not None and epoch >= freeze_bn_from
            loss_sum, n_seen = train_one_epoch(distributed.wrap(model), loader, criterion, optimizer, scheduler, cfg,
                                               gen, tick, freeze_bn=frozen, teacher=teacher)
            distributed.sync_buffers(model)  # every rank validates rank 0's BatchNorm statistics
            evaluated = model if avg is None else avg.model(model)
            val_logits = predict(evaluated, splits.val)
            m = metrics.evaluate(val_logits, splits.val.labels, splits.ok_index, report_fpr=cfg.report_fpr)
            score, nll = _score(m), _nll(val_logits, splits.val.labels)
            history["epochs"].append({"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "val_nll": nll,
                                      "val": {k: v for k, v in m.items() if k != "confusion_matrix"},
                                      "seconds": round(time.perf_counter() - t0, 2)})
            info = f"loss {loss_sum / max(n_seen, 1):.3f} val acc {m['accuracy']:.3f} score {score:.3f} nll {nll:.3f}"
            progress.update(task, info=info)
            if not console.is_terminal:  # a log file gets one line per epoch instead of a live bar
                console.print(f"{label} epoch {epoch + 1}/{epochs}: {info} ({time.perf_counter() - t0:.0f} s)")
            if (score, -nll) > best:
                best, best_state, since_best = (score, -nll), copy.deepcopy(evaluated.state_dict()), 0
            elif (epoch + 1) * len(loader) > warm_steps:  # patience counts only once warm-up is over
                since_best += 1
                if since_best >= cfg.patience:
                    console.print(f"{label}: early stop after epoch {epoch + 1} (no validation gain for {cfg.patience})")
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    history["best_val_score"], history["best_val_nll"] = best[0], -best[1]
    model.eval()
    return history


def warmup_steps(total_steps: int, warmup_fraction: float = 0.1) -> int:
    return max(1, int(warmup_fraction * total_steps))


def warmup_cosine(optimizer, total_steps: int, warmup_fraction: float = 0.1):
    """Linear warm-up, then cosine decay to zero."""
    warm = warmup_steps(total_steps, warmup_fraction)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def train_one_epoch(model, loader, criterion, optimizer, scheduler, cfg, gen, tick,
                    freeze_bn: bool = False, teacher=None) -> tuple[float, int]:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    loss_sum, n_seen = 0.0, 0
    shard = getattr(loader, "batch_sampler", None)
    shard = shard if isinstance(shard, distributed.ShardedBatchSampler) else None
    for pixels, target in loader:
        x = to_input(pixels)
        if cfg.augment:
            x = augment_batch(x, gen) if shard is None else distributed.augment_share(augment_batch, x, gen, shard.current)
        logits = model(x)
        if teacher is None:
            loss = criterion(torch.as_tensor(logits), target)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = criterion(torch.as_tensor(logits), target, torch.as_tensor(teacher_logits))
        if shard is not None:  # DDP averages over ranks: weighted, that is the global batch's mean
            loss = loss * distributed.loss_weight(shard.current, len(target))
        check_finite(loss, scheduler.get_last_lr()[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(target)
        n_seen += len(target)
        tick()
    return loss_sum, n_seen
