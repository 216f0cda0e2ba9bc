"""Kaggle / Severstal run-length encoding of binary masks.

Format: "start length start length ...", starts 1-indexed into the mask flattened in
column-major (Fortran) order, i.e. pixel (row r, column c) of an H-row mask is number
1 + r + c * H; runs may continue from the bottom of one column to the top of the next.
An empty string is an empty mask. Runs must not overlap; `rle_decode` accepts them in
any order, `rle_encode` writes them ascending.
"""
from __future__ import annotations

import re

import numpy as np

from core.errors import UserError

MAX_DIGITS = 12  # a pixel index of a 10^12-pixel image: beyond any real mask
_NUMBER = re.compile(rf"^[-+]?[0-9]{{1,{MAX_DIGITS}}}$", re.ASCII)


def parse_rle(rle: str, num_pixels: int, where: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """Validated (0-based starts, lengths), sorted by start. `where` names the source."""
    tokens = rle.split()
    if len(tokens) % 2:
        raise UserError(f"{where}: malformed RLE, odd number of values ({len(tokens)}); expected 'start length' pairs: fix or delete it")
    # ASCII digits only (int() would also read '１２' or '٣'), and at most MAX_DIGITS of them
    bad = next((t for t in tokens if not _NUMBER.match(t)), None)
    if bad is not None:
        shown = repr(bad if len(bad) <= 24 else bad[:20] + "...")
        what = f"a number of {len(bad)} digits" if bad.isascii() and bad.isdigit() else "not an integer (ASCII digits)"
        raise UserError(f"{where}: malformed RLE, {shown} is {what}: fix or delete it")
    values = np.array([int(t) for t in tokens], dtype=np.int64)
    starts, lengths = values[0::2], values[1::2]
    if starts.size == 0:
        return starts, lengths
    if starts.min() < 1 or lengths.min() < 1:
        raise UserError(f"{where}: malformed RLE, starts are 1-indexed and lengths at least 1 (found {starts.min()}/{lengths.min()}): fix or delete it")
    ends = starts + lengths - 1
    if ends.max() > num_pixels:
        raise UserError(f"{where}: RLE run ends at pixel {ends.max()}, beyond the image's {num_pixels} pixels: is it for another image size?")
    order = np.argsort(starts, kind="stable")
    starts, lengths, ends = starts[order], lengths[order], ends[order]
    overlap = np.nonzero(starts[1:] <= ends[:-1])[0]
    if overlap.size:
        k = overlap[0]
        raise UserError(f"{where}: malformed RLE, runs '{starts[k]} {lengths[k]}' and '{starts[k + 1]} {lengths[k + 1]}' overlap: fix or delete it")
    return starts - 1, lengths


def rle_area(rle: str, num_pixels: int, where: str = "RLE") -> int:
    """Number of mask pixels, without decoding the mask."""
    return int(parse_rle(rle, num_pixels, where)[1].sum())


def rle_decode(rle: str, shape: tuple[int, int], where: str = "RLE") -> np.ndarray:
    """RLE string -> bool mask of `shape` (height, width)."""
    h, w = shape
    starts, lengths = parse_rle(rle, h * w, where)
    edges = np.zeros(h * w + 1, dtype=np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    return np.cumsum(edges[:-1]).astype(bool).reshape((h, w), order="F")


def rle_encode(mask: np.ndarray) -> str:
    """bool/0-1 mask [H, W] -> RLE string (empty string for an empty mask)."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).ravel(order="F"), [False]])
    changes = np.nonzero(flat[1:] != flat[:-1])[0] + 1  # 1-indexed starts and one-past-ends
    starts, stops = changes[0::2], changes[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, stops))
