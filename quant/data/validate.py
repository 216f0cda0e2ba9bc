"""Check every file of a dataset once, before any training: `scan(records)`.

Each image file is opened once: its bytes are read, hashed (sha256, for the duplicate
checks) and decoded completely (a truncated JPEG or a corrupt strip fails here, not in
epoch 3, and not never: the weighted sampler may never draw a given file). A mask file is
decoded too and must have its image's size, whatever dataset.resize says. Streaming: one
file per worker thread is in memory at a time, nothing decoded is kept.

Every file is tried; a file that cannot be used is refused, and one UserError names the
first refused file with its reason, and how many others were refused.
"""
from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.errors import UserError
from quant.data.images import read_gray

_SHOWN = 3  # other refused files named in the error


@dataclass
class Scan:
    sizes: dict[str, tuple[int, int]]  # image path -> (height, width)
    hashes: dict[str, str]  # image path -> sha256 of its bytes
    note: str  # what was checked, for Splits.notes


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path} not found: the dataset changed while loading; check dataset.path and rerun") from None
    except OSError as e:
        hint = "a symlink loop: remove the link" if e.errno == errno.ELOOP else "check the file and its permissions"
        raise UserError(f"cannot read {path} ({e.strerror}): {hint}") from None


def _image(path: str) -> tuple[tuple[int, int], str, int]:
    data = _read(path)
    gray = read_gray(path, data)
    return gray.shape, hashlib.sha256(data).hexdigest(), len(data)


def _mask(mask: str, image: str, shape: tuple[int, int]) -> None:
    m = read_gray(mask, _read(mask))
    if m.shape != tuple(shape):
        raise UserError(f"mask {mask} is {m.shape[1]}x{m.shape[0]} but its image {os.path.basename(image)} is "
                        f"{shape[1]}x{shape[0]}: masks must match their image")


def _check(record) -> tuple[str, tuple | None, UserError | None]:
    try:
        shape, digest, n = _image(record.path)
        if record.mask is not None and record.mask.path is not None:
            _mask(record.mask.path, record.path, shape)
        return record.path, (shape, digest, n), None
    except UserError as e:
        return record.path, None, e


def scan(records, workers: int | None = None) -> Scan:
    """Open and check every image (and mask file) of `records` once; UserError if any is refused."""
    unique = list({r.path: r for r in records}.values())
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    sizes, hashes, refused, total_bytes = {}, {}, [], 0
    with ThreadPoolExecutor(workers) as pool:
        for path, ok, err in pool.map(_check, unique):
            if err is not None:
                refused.append((path, err))
                continue
            shape, digest, n = ok
            sizes[path], hashes[path] = shape, digest
            total_bytes += n
    if refused:
        refused.sort(key=lambda item: item[0])
        first = str(refused[0][1])
        if len(refused) > 1:
            others = ", ".join(os.path.basename(p) for p, _ in refused[1:1 + _SHOWN])
            more = f" +{len(refused) - 1 - _SHOWN}" if len(refused) - 1 > _SHOWN else ""
            first += f" ({len(refused)} of {len(unique)} files refused; also {others}{more})"
        raise UserError(first)
    masks = sum(1 for r in unique if r.mask is not None and r.mask.path is not None)
    return Scan(sizes, hashes, f"checked every file once before training: {len(unique)} images"
                               + (f" and {masks} masks" if masks else "") + f" ({total_bytes / 2**20:.1f} MB) decode, none refused")
