"""Data-parallel training (quant/distributed.py): N ranks train on the single-process batches.

Fast: the sharded weighted sampler and the augmentation share, exactly, without processes.
Slow: `torchrun --nproc_per_node 2 -m qdeploy train` against one process, on CPU (gloo).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from quant.augment import augment_batch
from quant.distributed import ShardedBatchSampler, augment_share, share


def _weighted(seed):
    weights = torch.as_tensor(np.r_[np.full(75, 1.0), np.full(25, 3.0)])  # imbalance, as quant.train weights it
    return WeightedRandomSampler(weights, num_samples=100, replacement=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_draw_exactly_the_single_process_weighted_batches(world):
    single = list(torch.utils.data.BatchSampler(_weighted(7), 16, drop_last=False))
    per_rank = [list(ShardedBatchSampler(_weighted(7), 16, r, world)) for r in range(world)]
    assert all(len(b) == len(single) for b in per_rank)
    for k, batch in enumerate(single):
        assert sum((per_rank[r][k] for r in range(world)), []) == batch  # disjoint shares, in order
    assert [share(16, r, world).stop - share(16, r, world).start for r in range(world)] == \
        [len(per_rank[r][0]) for r in range(world)]


def test_augmenting_a_share_equals_the_share_of_the_augmented_batch(monkeypatch):
    import quant.distributed as d

    x = torch.rand(16, 1, 32, 32)
    whole = augment_batch(x, torch.Generator().manual_seed(3))
    monkeypatch.setattr(d, "world_size", lambda: 2)
    part = augment_share(augment_batch, x[8:], torch.Generator().manual_seed(3), (8, 16))
    assert torch.equal(part, whole[8:])


# the pipeline test's small job, with a larger test set (so the bound below is not vacuous)
JOB = ["--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=800", "--set", "dataset.difficulty=0.0",
       "--set", "model.width=0.5", "--set", "train.float_epochs=6", "--set", "train.qat_epochs=2",
       "--set", "train.batch_size=16", "--set", "train.patience=3"]


@pytest.mark.slow
def test_two_processes_train_what_one_does(tmp_path):
    """Same seed, same global batches (test above), same augmentation; what differs is that
    BatchNorm normalises each rank's half batch with its own statistics (SyncBatchNorm needs
    CUDA) and the float order of the gradient all-reduce. Bound: the test accuracy and the
    operating-point recall of the two runs differ by at most the 95% interval of the
    difference of two proportions measured on the same n test images (for the recall: the n
    defective ones), 1.96 * sqrt(2 p (1-p) / n):
    a difference beyond it is more than sampling noise on this test set, i.e. a training
    that is not the same. Validation decides the same on every rank (rank 0's statistics
    are broadcast), so both runs stop at an epoch count of their own, checked too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    runs = {1: [sys.executable, "-m", "qdeploy", "train"],
            2: [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "qdeploy", "train"]}
    metrics = {}
    for n, cmd in runs.items():
        done = subprocess.run([*cmd, "--build-dir", str(tmp_path / f"p{n}"), *JOB], env=env, capture_output=True,
                              text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[n] = json.loads((tmp_path / f"p{n}" / "default" / "train" / "metrics.json").read_text())
        if n == 2:
            assert "2 processes, DistributedDataParallel over gloo" in done.stderr
    assert not list(Path("/tmp").glob("qdeploy-rank1-*")), "rank 1's scratch folder is removed"
    for model in ("float", "qat"):
        a, b = metrics[1][model]["test"], metrics[2][model]["test"]
        n_defect = int(sum(a["confusion_matrix"][1]))  # true defects: the recall's denominator
        for key, n in (("accuracy", a["n"]), ("op_recall", n_defect)):
            p = (a[key] + b[key]) / 2
            bound = 1.96 * np.sqrt(2 * max(p * (1 - p), 1 / n) / n)
            assert abs(a[key] - b[key]) <= bound, f"{model} {key}: {a[key]:.4f} vs {b[key]:.4f} (bound {bound:.4f})"
        assert a["auroc"] > 0.8 and b["auroc"] > 0.8  # both trained a model that finds the defects
