"""load_splits: a dataset on disk -> stratified, seeded, leak-checked train/val/test ImageSets.

1. List the dataset (quant.data.loaders; a synthetic dataset is generated first, into
   cache_dir, then read as a folder dataset) and map its classes to the task's labels.
2. Hash every file (sha256). With dataset.dedup, byte-identical files form one group and
   land in the same split, so a random split cannot leak them.
3. Split whole images (never tiles: the tiles of one image stay in one split), stratified
   by label with sklearn's train_test_split and the recipe seed: train / val / test by
   dataset.split; with dataset.use_official_test, the layout's own test split is the test
   set and its train split is divided into train / val by the train:val ratio.
4. Files of val / test byte-identical to a file of an earlier split (possible only across
   an official split, or without dataset.dedup) are reported and, with dataset.dedup,
   dropped. Layouts flagged for it (casting) are also checked for near-duplicates
   (quant.data.dedup): test images near-identical to a train/val image are reported and,
   with dataset.dedup, dropped.
5. With dataset.resize: tile, each image becomes its tiles (labels from masks).

Every duplicate found is listed in Splits.duplicates; Splits.notes says what happened, in words.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from core.errors import UserError
from quant.data.dedup import NEAR_DUP_NCC, THUMB, duplicate_groups, near_duplicates
from quant.data.imageset import ImageSet
from quant.data.loaders import Listing, MaskSource, Record, assign_classes, list_dataset, tile_records
from quant.data.validate import scan

SPLITS = ("train", "val", "test")
_SHOWN = 5  # file names quoted per note


class DataWarning(UserWarning):
    """Something in the data the user should know about (duplicates, conflicting labels)."""


@dataclass(frozen=True)
class Duplicate:
    """A val/test image that duplicates an image of an earlier split."""

    key: str  # the duplicate (path relative to the dataset root)
    split: str  # its split
    kind: str  # "exact" (same bytes) or "near" (NCC >= threshold)
    match: str  # the image it duplicates, in an earlier split
    score: float  # NCC (1.0 for exact duplicates)
    dropped: bool  # removed from its split (dataset.dedup) or only reported


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: tuple[str, ...]
    ok_index: int | None
    notes: list[str] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def _dataset_root(cfg, seed: int, cache_dir: Path) -> Path:
    if cfg.kind == "synthetic":
        from quant.data.synthetic import ensure_generated

        return Path(ensure_generated(cfg, seed, Path(cache_dir), difficulty=cfg.difficulty))
    return Path(cfg.path).expanduser()


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _warn(notes: list[str], message: str) -> None:
    notes.append(message)
    warnings.warn(message, DataWarning, stacklevel=3)


def _stratified(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str, root: Path,
                names: tuple[str, ...]):
    counts = Counter(labels.tolist())
    rare = sorted(c for c, n in counts.items() if n < 2)
    if rare:
        raise UserError(f"{root}: class {names[rare[0]]} has {counts[rare[0]]} distinct image(s) to split {what}; "
                        "stratified splitting needs at least 2: add images of that class")
    try:
        return train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed, shuffle=True)
    except ValueError as e:
        raise UserError(f"{root}: cannot split {len(idx)} images {what} stratified ({e}): add images or change dataset.split") from None


def _split_records(records: list[Record], labels: np.ndarray, groups: list, fractions, official: bool, seed: int,
                   root: Path, names: tuple[str, ...]) -> list[str]:
    """Split name per record; records of one group share a split."""
    order = sorted(set(groups), key=str)
    gid = {g: k for k, g in enumerate(order)}
    first = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    g_labels = np.array([labels[first[g]] for g in order], dtype=np.int64)
    g_split = np.empty(len(order), dtype=object)
    f_train, f_val, f_test = fractions
    if official:
        is_test = np.array([records[first[g]].split == "test" for g in order])
        g_split[is_test] = "test"
        pool = np.nonzero(~is_test)[0]
        if len(pool) == 0 or is_test.sum() == 0:
            raise UserError(f"{root}: the official {'train' if len(pool) == 0 else 'test'} split is empty: restore it or set dataset.use_official_test: false")
    else:
        all_idx = np.arange(len(order))
        pool, test = _stratified(all_idx, g_labels, f_test, seed, "into train+val / test", root, names)
        g_split[test] = "test"
    train, val = _stratified(pool, g_labels[pool], f_val / (f_train + f_val), seed, "into train / val", root, names)
    g_split[train], g_split[val] = "train", "val"
    return [g_split[gid[g]] for g in groups]


def _exact_cross_split(by_split: dict[str, list[Record]], hashes: dict[str, str], drop: bool,
                       notes: list[str]) -> list[Duplicate]:
    first_seen: dict[str, tuple[str, str]] = {}  # digest -> (split, key) where it first occurs
    found: list[Duplicate] = []
    for split in SPLITS:
        kept = []
        for r in by_split[split]:
            seen_split, seen_key = first_seen.setdefault(hashes[r.path], (split, r.key))
            if seen_split != split:
                found.append(Duplicate(r.key, split, "exact", seen_key, 1.0, drop))
                if drop:
                    continue
            kept.append(r)
        by_split[split] = kept
    if found:
        action = "dropped" if drop else "kept (dataset.dedup: false)"
        per = Counter(d.split for d in found)
        _warn(notes, f"{action} {len(found)} val/test images byte-identical to an image of an earlier split "
                     f"({', '.join(f'{n} {s}' for s, n in per.items())}): "
                     + _names([f"{d.key} = {d.match}" for d in found]))
    return found


def _near_cross_split(by_split: dict[str, list[Record]], drop: bool, notes: list[str], hashes: dict[str, str],
                      cache_dir: Path) -> list[Duplicate]:
    refs = sorted({r.path: r.key for r in by_split["train"] + by_split["val"]}.items())
    queries = sorted({r.path: r.key for r in by_split["test"]}.items())
    matches = near_duplicates([p for p, _ in queries], [p for p, _ in refs], hashes=hashes, cache_dir=cache_dir)
    key_of = dict(refs) | dict(queries)
    found = [Duplicate(key_of[q], "test", "near", key_of[m], score, drop) for q, m, score in matches]
    if found:
        if drop:
            gone = {d.key for d in found}
            by_split["test"] = [r for r in by_split["test"] if r.key not in gone]
        action = "dropped" if drop else "kept (dataset.dedup: false)"
        _warn(notes, f"{action} {len(found)} test images near-identical to a train/val image "
                     f"(NCC >= {NEAR_DUP_NCC} on {THUMB}x{THUMB} thumbnails): "
                     + _names([f"{d.key} ~ {d.match} ({d.score:.4f})" for d in found]))
    return found


def _duplicate_notes(records: list[Record], hashes: dict[str, str], label_of: dict[str, int], notes: list[str]) -> None:
    key_of = {r.path: r.key for r in records}
    cls_of = {r.path: r.cls for r in records}
    groups = duplicate_groups({p: hashes[p] for p in key_of})
    if not groups:
        return
    conflicting = [g for g in groups if len({label_of[cls_of[p]] for p in g}) > 1]
    if conflicting:
        _warn(notes, f"{len(conflicting)} groups of byte-identical files carry different labels: "
                     + _names([" = ".join(f"{key_of[p]} ({cls_of[p]})" for p in g) for g in conflicting])
                     + "; fix the labels (the first file's label is used for splitting)")
    notes.append(f"{len(groups)} groups of byte-identical files ({sum(map(len, groups))} files): "
                 + _names([" = ".join(key_of[p] for p in g) for g in groups]))


def _summary(sets: dict[str, ImageSet], class_names: tuple[str, ...]) -> str:
    parts = []
    for split, s in sets.items():
        counts = np.bincount(s.labels, minlength=len(class_names))
        parts.append(f"{split} {len(s)} (" + ", ".join(f"{c} {n}" for c, n in zip(class_names, counts)) + ")")
    return "; ".join(parts)


def load_splits(cfg, seed: int, cache_dir: Path) -> Splits:
    """Build the train / val / test ImageSets described by `cfg` (a DatasetConfig)."""
    root = _dataset_root(cfg, seed, cache_dir)
    listing: Listing = list_dataset(cfg.kind, root, cfg.ok_classes, boxes=cfg.boxes and Path(cfg.boxes).expanduser())
    notes = list(listing.notes)
    class_names, ok_index, label_of = assign_classes(listing, cfg.task)
    records = listing.records
    if cfg.use_official_test and not listing.has_official_test:
        raise UserError(f"dataset.use_official_test is set, but {listing.no_official_test}: set dataset.use_official_test: false")
    labels = np.array([label_of[r.cls] for r in records], dtype=np.int64)

    checked = scan(records)  # every file opened once: decoded, hashed, masks against their images
    sizes, hashes = checked.sizes, checked.hashes
    notes.append(checked.note)
    _duplicate_notes(records, hashes, label_of, notes)
    official = cfg.use_official_test
    groups = [(r.split if official else None, hashes[r.path] if cfg.dedup else r.path) for r in records]
    assigned = _split_records(records, labels, groups, cfg.split, official, seed, root, class_names)
    by_split = {s: [r for r, a in zip(records, assigned) if a == s] for s in SPLITS}
    if official:
        notes.append(f"test split: the official one of {root} (dataset.split's test fraction is not used)")

    duplicates = _exact_cross_split(by_split, hashes, cfg.dedup, notes)
    if listing.near_dup_check:
        duplicates += _near_cross_split(by_split, cfg.dedup, notes, hashes, Path(cache_dir))

    if cfg.resize == "tile":
        ok_class = next((c for c in listing.classes if c in listing.ok_classes), None)
        before = sum(map(len, by_split.values()))
        by_split = {s: tile_records(rs, cfg.size, ok_class, sizes) for s, rs in by_split.items()}
        notes.append(f"tiled {before} images into {sum(map(len, by_split.values()))} tiles of {cfg.size[0]}x{cfg.size[1]}")

    with_masks = any(r.mask is not None for r in records)
    ok_names = set(listing.ok_classes)

    def mask_source(r: Record):
        known = r.mask is not None or (with_masks and r.cls in ok_names)  # an ok image of a masked set: empty
        return MaskSource(r.mask, r.cls) if known else None

    sets = {}
    for split, rs in by_split.items():
        if not rs:
            raise UserError(f"{root}: the {split} split is empty after splitting and de-duplication: add images or change dataset.split")
        sets[split] = ImageSet([r.path for r in rs], [label_of[r.cls] for r in rs], [r.key for r in rs], cfg.size,
                               cfg.resize, [r.box for r in rs], class_names,
                               masks=[mask_source(r) for r in rs], normalize=cfg.normalize, orient=cfg.orient)
    if with_masks:
        known = sum(m is not None for s in sets.values() for m in s.masks)
        notes.append(f"pixel masks known for {known} of {sum(map(len, sets.values()))} images")
    for split, s in sets.items():
        missing = [c for k, c in enumerate(class_names) if not (s.labels == k).any()]
        if missing:
            notes.append(f"the {split} split has no images of class {', '.join(missing)}")
    notes.append(f"{cfg.kind} {root}: {_summary(sets, class_names)}")
    return Splits(sets["train"], sets["val"], sets["test"], tuple(class_names), ok_index, notes, duplicates)
