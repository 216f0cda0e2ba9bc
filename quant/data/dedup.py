"""Duplicate images: exact (same file bytes) and near (same picture, re-encoded or
slightly shifted / re-lit).

Exact: sha256 of the file bytes. Near: every image becomes a THUMB x THUMB grayscale
thumbnail, normalised to zero mean and unit norm, so the dot product of two thumbnails is
their normalised correlation (NCC); a query image whose best NCC with a reference image
is >= NEAR_DUP_NCC is a near-duplicate of it. One float32 matrix product per chunk of
queries: 715 x 6633 casting images take well under a second after decoding (JPEGs are
decoded at reduced scale with PIL's draft mode). Thumbnails can be cached by content hash
(`cached_thumbnails`, uint8, 2.3 kB per image), so a second load skips the decoding.

NEAR_DUP_NCC = 0.999 on 48x48 reproduces the check documented for the casting data
(81 of its 715 test images, 64 of them byte-identical to training images). Lower
thresholds flag many more casting pairs that look like the same part re-photographed or
augmented (262 at 0.99), so even the de-duplicated casting test score is optimistic.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from core.atomic import atomic_path
from quant.data.images import read_gray

THUMB = 48
NEAR_DUP_NCC = 0.999
_CHUNK = 1024


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(paths: Iterable[str]) -> dict[str, str]:
    """path -> sha256 hex digest of its bytes (threads: hashlib releases the GIL)."""
    unique = sorted(set(paths))
    with ThreadPoolExecutor(_workers()) as pool:
        return dict(zip(unique, pool.map(sha256_file, unique)))


def duplicate_groups(hashes: dict[str, str]) -> list[list[str]]:
    """Groups (sorted, two or more paths) of byte-identical files, sorted by first path."""
    by_hash: dict[str, list[str]] = {}
    for path, digest in hashes.items():
        by_hash.setdefault(digest, []).append(path)
    return sorted(sorted(g) for g in by_hash.values() if len(g) > 1)


def thumbnail(path: str, side: int = THUMB) -> np.ndarray:
    """uint8 side x side grayscale thumbnail, flattened."""
    try:
        with Image.open(path) as im:
            im.draft("L", (side, side))  # JPEG: decode at 1/2..1/8 scale, straight to gray
            if im.mode not in ("L", "RGB", "YCbCr", "1"):
                raise OSError("mode needs read_gray")
            small = im.convert("L").resize((side, side), Image.Resampling.BILINEAR)
    except OSError:  # unusual modes and broken files: the full decoder (UserError if broken)
        small = Image.fromarray(read_gray(path)).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8).ravel()


def thumbnails(paths: Sequence[str], side: int = THUMB) -> np.ndarray:
    """uint8 [N, side*side] thumbnails (threads: PIL decodes without the GIL)."""
    if not paths:
        return np.zeros((0, side * side), np.uint8)
    with ThreadPoolExecutor(_workers()) as pool:
        return np.stack(list(pool.map(lambda p: thumbnail(p, side), paths)))


def cached_thumbnails(paths: Sequence[str], hashes: dict[str, str], cache_dir: Path, side: int = THUMB) -> np.ndarray:
    """thumbnails(), remembered in <cache_dir>/thumbs<side>.npz by file content hash."""
    file = Path(cache_dir) / f"thumbs{side}.npz"
    known: dict[str, np.ndarray] = {}
    if file.is_file():
        try:
            with np.load(file) as z:
                known = dict(zip(z["keys"].tolist(), z["thumbs"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            known = {}  # a damaged cache is rebuilt
    missing = sorted({hashes[p]: p for p in paths if hashes[p] not in known}.items())
    if missing:
        known.update(zip([h for h, _ in missing], thumbnails([p for _, p in missing], side)))
        with atomic_path(file) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(list(known)), thumbs=np.stack(list(known.values())))
    if not paths:
        return np.zeros((0, side * side), np.uint8)
    return np.stack([known[hashes[p]] for p in paths])


def normalise(thumbs: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm float32 rows: their dot products are NCCs (a flat image: 0)."""
    a = thumbs.astype(np.float32)
    a -= a.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def best_matches(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each normalised query thumbnail: (index of the most correlated reference, NCC)."""
    n = len(queries)
    best_idx = np.full(n, -1, dtype=np.int64)
    best_ncc = np.full(n, -np.inf, dtype=np.float32)
    if n == 0 or len(references) == 0:
        return best_idx, best_ncc
    for start in range(0, n, _CHUNK):
        ncc = queries[start : start + _CHUNK] @ references.T
        best_idx[start : start + _CHUNK] = ncc.argmax(axis=1)
        best_ncc[start : start + _CHUNK] = ncc.max(axis=1)
    return best_idx, best_ncc


def near_duplicates(query_paths: Sequence[str], ref_paths: Sequence[str], threshold: float = NEAR_DUP_NCC,
                    side: int = THUMB, hashes: dict[str, str] | None = None,
                    cache_dir: Path | None = None) -> list[tuple[str, str, float]]:
    """(query, its closest reference, NCC) for every query with NCC >= threshold.

    With `hashes` (path -> sha256) and `cache_dir`, thumbnails are cached by content.
    """
    both = list(query_paths) + list(ref_paths)
    if hashes is not None and cache_dir is not None:
        thumbs = cached_thumbnails(both, hashes, cache_dir, side)
    else:
        thumbs = thumbnails(both, side)
    thumbs = normalise(thumbs)
    idx, ncc = best_matches(thumbs[: len(query_paths)], thumbs[len(query_paths) :])
    return [(query_paths[i], ref_paths[idx[i]], float(ncc[i])) for i in np.nonzero(ncc >= threshold)[0]]
