"""Decode image files to uint8 grayscale and fit them to the model input size.

Decoding (`read_gray`): any file PIL reads, as one uint8 [H, W] array on the pixel grid
as stored (EXIF orientation is ignored, because masks are drawn on the stored grid).
  L          as is            1 (bilevel)   0 / 255
  RGB, P, CMYK, YCbCr, ...    ITU-R 601 luma via PIL (R=G=B stays exact); alpha ignored
  I;16*      16-bit           round(v * 255 / 65535)
  I          treated as 16-bit: clipped to 0..65535, then as I;16
  F          treated as [0, 1]: clipped, round(v * 255)
A zero-byte, truncated or undecodable file, or one with several frames (animated GIF,
multi-page TIFF), is a UserError naming the file. Reading the size (`image_size`, run on
every file when a dataset is loaded) already catches all but a truncated non-PNG file,
which is caught when it is decoded.

Geometry to the model size (h, w):
  resize     PIL bilinear (antialiased when shrinking), aspect not kept
  letterbox  keep the aspect, resize to fit, centre, pad with the mean of the image's
             border pixels (the background, usually)
  tile       `tile_boxes`: cut along the long side into evenly spaced, possibly overlapping
             crops of the target aspect, each resized to (h, w) and used as its own sample
"""
from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GEOMETRIES = ("resize", "letterbox", "tile")
# A tile count within this fraction of a whole number is rounded down: a 1.04-tile
# image becomes one slightly squashed tile rather than two 96 %-overlapping ones.
TILE_SLACK = 0.05
PNG_TAIL = 1024  # bytes searched for the IEND chunk at the end of a PNG

Box = tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _open(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    path = Path(path)
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise UserError(f"{path} is empty (0 bytes): delete it or replace it with the original image")
        im = Image.open(path if data is None else io.BytesIO(data))
        frames = getattr(im, "n_frames", 1)
    except FileNotFoundError:
        raise UserError(f"{path} not found: the dataset changed while loading; check dataset.path and rerun") from None
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image PIL can read: delete it or convert it to PNG") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path} is too large to decode safely: crop or downscale it") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}): check the file, or delete it") from None
    if frames > 1:
        im.close()
        raise UserError(f"{path} has {frames} frames (animated or multi-page): save the frame to use as a single-image PNG")
    return im


def _check_png_end(path: str | os.PathLike) -> None:
    # A PNG ends with its IEND chunk: without it the file was cut short, which PIL would
    # only notice when decoding the pixels (during training). Trailing bytes are allowed.
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - PNG_TAIL))
        if b"IEND" not in f.read():
            raise UserError(f"{path} is truncated (the PNG has no end chunk): delete it or replace it with the original image")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels (a PNG is also
    checked to be complete: truncated files are the commonest broken download)."""
    with _open(path) as im:
        if im.format == "PNG":
            _check_png_end(path)
        return im.height, im.width


def image_sizes(paths: list[str]) -> dict[str, tuple[int, int]]:
    """path -> (height, width) for many files, reading headers only (threads).

    Checks on the way that every file is a readable, single-frame image (UserError if
    not), so a broken file stops loading instead of a training run.
    """
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(unique, pool.map(image_size, unique)))


def _to_gray(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        a = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0)
        return np.rint(a * 255.0).astype(np.uint8)
    if mode in ("1", "RGB", "YCbCr"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel("L"), dtype=np.uint8)
    # P, PA, RGBA, RGBX, CMYK, ...: through RGB (alpha dropped), then luma
    return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)


def read_gray(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """Decode one image file (or its bytes `data`, already read) to uint8 grayscale [H, W]."""
    im = _open(path, data)
    try:
        if data is not None and im.format == "PNG" and b"IEND" not in data[-PNG_TAIL:]:
            raise UserError(f"{path} is truncated (the PNG has no end chunk): delete it or replace it with the original image")
        im.load()
        return _to_gray(im)
    except (OSError, SyntaxError, EOFError) as e:
        raise UserError(f"{path} is truncated or corrupt ({e}): delete it or replace it with the original image") from None
    except ValueError as e:  # a mode PIL cannot convert to RGB (e.g. LAB)
        raise UserError(f"{path}: cannot convert image mode {im.mode} to grayscale ({e}): save it as 8-bit grayscale PNG") from None
    finally:
        im.close()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask image as bool [H, W]: any non-zero pixel is defect."""
    return read_gray(path) > 0


def resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if gray.shape == (h, w):
        return gray
    return np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def _letterbox_place(src: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a src-shaped image scaled into `size`, aspect kept, centred."""
    h, w = size
    scale = min(h / src[0], w / src[1])
    new_h, new_w = min(h, max(1, round(src[0] * scale))), min(w, max(1, round(src[1] * scale)))
    return (h - new_h) // 2, (w - new_w) // 2, new_h, new_w


def letterbox(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    top, left, new_h, new_w = _letterbox_place(gray.shape, size)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    out = np.full(size, int(np.rint(border.mean())), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = resize(gray, (new_h, new_w))
    return out


def fit_mask(mask: np.ndarray, size: tuple[int, int], geometry: str, box: Box | None = None) -> np.ndarray:
    """A bool mask [H, W] brought to the model size the way `fit` brings its image: a model
    pixel is defect when any part of it is (a defect a few pixels wide never vanishes)."""
    m = np.where(mask, np.uint8(255), np.uint8(0))
    if box is not None:
        top, left, bottom, right = box
        m = np.ascontiguousarray(m[top:bottom, left:right])
    elif geometry == "letterbox":
        top, left, new_h, new_w = _letterbox_place(m.shape, size)
        out = np.zeros(size, dtype=np.uint8)
        out[top:top + new_h, left:left + new_w] = _mask_resize(m, (new_h, new_w))
        return out > 0
    return _mask_resize(m, size) > 0


def _mask_resize(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if m.shape == (h, w):
        return m
    return np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.BOX), dtype=np.uint8)


def stretch(gray: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Per-image contrast stretch: the lo..hi percentiles to 0..255 (dark, low-contrast
    inspection images; the same host-side step runs before every deployed model)."""
    lo, hi = np.percentile(gray, [lo_pct, hi_pct])
    if hi - lo < 1:
        return gray
    return np.clip(np.rint((gray.astype(np.float32) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def tile_boxes(src_h: int, src_w: int, size: tuple[int, int]) -> list[Box]:
    """Crops of the target aspect covering the image along its long side.

    A 256x1600 strip with a 64x64 target gives seven 256x256 crops starting at
    columns 0, 224, ..., 1344 (evenly spaced, overlapping by 32 px). An image whose
    aspect is within TILE_SLACK of the target's gives one box, the whole image.
    """
    h, w = size
    if src_w * h >= src_h * w:  # relatively wider than the target: tile along the width
        t = min(src_w, max(1, round(src_h * w / h)))
        n = max(1, math.ceil(src_w / t - TILE_SLACK))
        if n == 1:
            return [(0, 0, src_h, src_w)]
        starts = np.rint(np.linspace(0, src_w - t, n)).astype(int)
        return [(0, int(s), src_h, int(s) + t) for s in starts]
    t = min(src_h, max(1, round(src_w * h / w)))
    n = max(1, math.ceil(src_h / t - TILE_SLACK))
    if n == 1:
        return [(0, 0, src_h, src_w)]
    starts = np.rint(np.linspace(0, src_h - t, n)).astype(int)
    return [(int(s), 0, int(s) + t, src_w) for s in starts]


def fit(gray: np.ndarray, size: tuple[int, int], geometry: str, box: Box | None = None) -> np.ndarray:
    """Bring a decoded image (or the `box` crop of it, for tiles) to the model size."""
    if box is not None:
        top, left, bottom, right = box
        if bottom > gray.shape[0] or right > gray.shape[1]:
            raise ValueError(f"tile box {box} outside image of shape {gray.shape}")
        return resize(np.ascontiguousarray(gray[top:bottom, left:right]), size)
    if geometry == "letterbox":
        return letterbox(gray, size)
    return resize(gray, size)
