"""Data-parallel training under torchrun: DistributedDataParallel over gloo (CPU) or nccl (GPUs).

    torchrun --nproc_per_node 2 -m qdeploy train [--recipe R]

`init()` (called once by the CLI) reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK) and joins the process group; without it everything here is the identity and
training is the single-process loop, unchanged.

How a global batch is shared, so that N processes train the model one process would:
every rank draws the *same* global sample sequence from the same seeded generator (the
recipe's weighted sampler for class imbalance, or the shuffle), and `ShardedBatchSampler`
hands each rank its contiguous share of every global batch of `batch_size` images: a
distributed weighted sampler whose union over the ranks is exactly the single-process
batch. Augmentation draws its random numbers for the whole global batch on every rank
(`augment_share`), so each image gets the same flips, turns and jitter as with one process.
Each rank's loss is weighted by its share of the batch, and DDP averages the gradients:
the step is the single-process step. What still differs: BatchNorm normalises each rank's
share with that share's statistics (SyncBatchNorm needs CUDA), and float sums run in
another order; rank 0's BatchNorm buffers are broadcast to all ranks after every epoch, so
every rank validates (and early-stops) on the same weights. Only rank 0 writes artifacts.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or another launcher setting its environment) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None) -> bool:
    """Join the process group torchrun set up: gloo on CPU, nccl when CUDA is present.
    Returns True when training is distributed."""
    if not launched():
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def share(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank r's contiguous share of a global batch of n (sizes differ by at most one)."""
    r, w = (rank() if r is None else r), (world_size() if w is None else w)
    bounds = np.linspace(0, n, w + 1).round().astype(int)
    return slice(int(bounds[r]), int(bounds[r + 1]))


class ShardedBatchSampler(Sampler):
    """Batches of the rank's share of each global batch of `sampler`'s sequence.

    Every rank iterates the same `sampler` (same generator, same seed), so the global batches
    are the single-process ones; `current` holds (start, global size) of the last batch."""

    def __init__(self, sampler, batch_size: int, r: int | None = None, w: int | None = None):
        self.sampler, self.batch_size = sampler, batch_size
        self.r, self.w = (rank() if r is None else r), (world_size() if w is None else w)
        self.current = (0, batch_size)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield self._mine(batch)
                batch = []
        if batch:
            yield self._mine(batch)

    def _mine(self, batch: list[int]) -> list[int]:
        s = share(len(batch), self.r, self.w)
        if s.start == s.stop:  # a last global batch smaller than the world: this rank re-uses one image, weight 0
            s = slice(len(batch) - 1, len(batch))
            self.current = (s.start, -len(batch))
        else:
            self.current = (s.start, len(batch))
        return batch[s]


def augment_share(augment, x: torch.Tensor, gen: torch.Generator, current: tuple[int, int]) -> torch.Tensor:
    """`augment` of this rank's share `x` as if the whole global batch were augmented: the
    random numbers are drawn for all `n` images (in the same order), each image's own
    transform is applied to it. Per-image transforms make padding with zeros exact."""
    start, n = current
    n = abs(n)
    if world_size() == 1 or len(x) == n:
        return augment(x, gen)
    full = torch.zeros((n, *x.shape[1:]), dtype=x.dtype)
    full[start:start + len(x)] = x
    return augment(full, gen)[start:start + len(x)]


def loss_weight(current: tuple[int, int], local: int) -> float:
    """DDP averages gradients over ranks: weight w * local / n makes that the mean over the
    global batch (a rank padding a too-small last batch contributes 0)."""
    start, n = current
    if world_size() == 1:
        return 1.0
    if n < 0:
        return 0.0
    return world_size() * local / n


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed (the same module otherwise)."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() and dist.get_backend() == "nccl" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if world_size() == 1:
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)
