"""The real datasets in ../shared/datasets, through load_splits.

Skipped when the folder is missing, except under CI=true where that fails (see the
`datasets_dir` fixture in conftest.py; QDEPLOY_SHARED overrides the location).
Counts come from each dataset's README.txt.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qdeploy.recipe import DatasetConfig
from quant.data.splits import load_splits

pytestmark = pytest.mark.datasets

CASTING = {"train": {"def_front": 3758, "ok_front": 2875}, "test": {"def_front": 453, "ok_front": 262}}
NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def _class_of(key: str) -> str:
    return key.split("/")[-2]


def test_casting_official_split_counts_and_leak_removal(datasets_dir: Path, tmp_path):
    root = datasets_dir / "casting"
    listed = [line.split("\t") for line in (root / "cross_split_exact_duplicates.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert len(listed) == 64
    cfg = DatasetConfig(kind="casting", path=str(root), use_official_test=True, dedup=True, size=(32, 32))
    sp = load_splits(cfg, seed=0, cache_dir=tmp_path)
    assert sp.class_names == ("ok", "defect") and sp.ok_index == 0

    # train + val is exactly the official train split
    train_val = sp.train.keys + sp.val.keys
    assert len(set(train_val)) == len(train_val) and all(k.startswith("train/") for k in train_val)
    assert Counter(map(_class_of, train_val)) == CASTING["train"]
    # stratified: the val share of each class is the train:val ratio 0.15 / 0.85
    for cls, n in CASTING["train"].items():
        assert abs(sum(_class_of(k) == cls for k in sp.val.keys) - n * 0.15 / 0.85) <= 1

    # the 64 byte-identical test images are found and dropped, with the train file they copy
    exact = {(d.key, d.match) for d in sp.duplicates if d.kind == "exact"}
    assert exact == {(test, train) for train, test in listed}
    assert all(d.dropped and d.split == "test" for d in sp.duplicates)
    near = [d for d in sp.duplicates if d.kind == "near"]
    assert near and all(d.score >= 0.999 and d.match.startswith("train/") for d in near)

    # what remains of the test split: the official one minus what was dropped, no leak left
    dropped = {d.key for d in sp.duplicates}
    assert all(k.startswith("test/") for k in sp.test.keys) and not dropped & set(sp.test.keys)
    remaining = Counter(map(_class_of, sp.test.keys)) + Counter(map(_class_of, dropped))
    assert remaining == CASTING["test"]
    labels = np.array([0 if _class_of(k) == "ok_front" else 1 for k in sp.test.keys])
    np.testing.assert_array_equal(sp.test.labels, labels)
    x, _ = sp.test[0]
    assert tuple(x.shape) == (1, 32, 32)


def test_neu_type_task_counts_and_duplicate(datasets_dir: Path, tmp_path):
    cfg = DatasetConfig(kind="folder", path=str(datasets_dir / "neu_det" / "images"), task="type", size=(32, 32))
    sp = load_splits(cfg, seed=0, cache_dir=tmp_path)
    assert sp.class_names == NEU_CLASSES and sp.ok_index is None
    every = [(k, s.class_names[l]) for _, s in sp.items() for k, l in zip(s.keys, s.labels)]
    assert len({k for k, _ in every}) == 1800
    assert Counter(c for _, c in every) == {c: 300 for c in NEU_CLASSES}
    assert all(k.split("/")[0] == c for k, c in every)
    for name, s in sp.items():
        share = {"train": 0.7, "val": 0.15, "test": 0.15}[name]
        assert all(abs(n - 300 * share) <= 1 for n in np.bincount(s.labels, minlength=6)), name

    # patches_101 and patches_105 are byte-identical: reported, and kept in one split
    assert any("patches/patches_101.jpg = patches/patches_105.jpg" in n for n in sp.notes)
    holders = [name for name, s in sp.items() if {"patches/patches_101.jpg", "patches/patches_105.jpg"} & set(s.keys)]
    assert len(holders) == 1 and sp.duplicates == []


def test_magnetic_tile_images_and_masks_layout(datasets_dir):
    """<root>/images/<class> beside <root>/masks/<class>: every image gets its mask, and the
    layout is said in the notes (it was taken for one class named "images" before)."""
    from quant.data.loaders import list_folder

    listing = list_folder(datasets_dir / "magnetic_tile", ("Free",))
    assert len(listing.records) == 1344 and all(r.mask is not None for r in listing.records)
    assert sorted({r.cls for r in listing.records}) == ["Blowhole", "Break", "Crack", "Fray", "Free", "Uneven"]
    assert sum(r.cls == "Free" for r in listing.records) == 952
    assert any("masks/<class>" in n for n in listing.notes)
