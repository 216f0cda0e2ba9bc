"""Sample inputs for a model the user brings: uint8 pixels [N, C, H, W] at the model's input.

    read_samples(Path("images/"), (3, 32, 32))            # RGB images, exactly 32x32
    read_samples(Path("batch.npy"), (8, 16, 16))          # any channel count: arrays
    read_samples(Path("images/"), (1, 64, 64), resize=True)

A folder holds image files (png, jpg, bmp, tif) and/or .npy arrays; a single .npy file
is one array. Images give 1 channel (grayscale) or 3 (RGB); any other channel count comes
from arrays. An array is uint8 [N, C, H, W] or one sample [C, H, W] (also [H, W] for one
channel, and channels-last [N, H, W, C] / [H, W, C]). Nothing is resized unless asked:
the model then sees exactly what the hardware will.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import UserError

MAX_SAMPLES = 1000
IMAGE_CHANNELS = {1: "L", 3: "RGB"}


def read_samples(path: Path, shape: tuple[int, int, int], resize: bool = False) -> np.ndarray:
    """Every sample under `path` (sorted by file name) as uint8 [N, C, H, W] for an input (C, H, W)."""
    from quant.data.images import is_image_file

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npy":
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if is_image_file(p) or (p.is_file() and p.suffix.lower() == ".npy"))
        if not files:
            raise UserError(f"--samples {path} holds no images (png, jpg, bmp, tif) or .npy arrays")
    else:
        raise UserError(f"--samples {path} is neither a folder of images / .npy arrays nor a .npy file")
    batches, n = [], 0
    for f in files:
        x = read_array(f, shape, resize) if f.suffix.lower() == ".npy" else read_image(f, shape, resize)[None]
        batches.append(x[: MAX_SAMPLES - n])
        n += len(batches[-1])
        if n >= MAX_SAMPLES:
            break
    if n == 0:
        raise UserError(f"--samples {path}: the arrays hold no samples")
    return np.concatenate(batches)


def read_image(path: Path, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """One image file as uint8 [C, H, W] (C = 1 grayscale, 3 RGB)."""
    from PIL import Image, UnidentifiedImageError

    from quant.data.images import read_gray

    c, h, w = shape
    if c not in IMAGE_CHANNELS:
        raise UserError(f"the model takes {c} input channels; images give 1 (grayscale) or 3 (RGB): pass the samples "
                        f"as uint8 .npy arrays [N, {c}, {h}, {w}] (--samples DIR of .npy files, or one .npy file)")
    if c == 1:
        img = read_gray(path)[None]
    else:
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UserError(f"{path} is not an image PIL can read as RGB ({e}): convert it to PNG") from None
    return _fit(img, shape, resize, path)


def read_array(path: Path, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """One .npy file as uint8 [N, C, H, W]."""
    c, h, w = shape
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npy array ({str(e).splitlines()[0]})") from None
    if x.dtype != np.uint8:
        raise UserError(f"{path} holds {x.dtype} values; samples are uint8 pixels 0..255 (the model sees pixels / 255): "
                        "save them with .astype(np.uint8)")
    if x.ndim == 2 and c == 1:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise UserError(f"{path} is {list(x.shape)}; expected uint8 [N, {c}, {h}, {w}] or one sample [{c}, {h}, {w}]")
    if x.shape[1] != c and x.shape[3] == c:
        x = x.transpose(0, 3, 1, 2)  # channels-last
    return np.stack([_fit(s, shape, resize, path) for s in x]) if len(x) else x.reshape(0, c, h, w)


def _fit(img: np.ndarray, shape: tuple[int, int, int], resize: bool, path: Path) -> np.ndarray:
    """[C, H, W] at the model's size: as it is, or resized (bilinear) when asked."""
    from PIL import Image

    c, h, w = shape
    if img.shape[0] != c:
        raise UserError(f"{path} has {img.shape[0]} channels but the model takes {c}")
    if img.shape[1:] == (h, w):
        return np.ascontiguousarray(img)
    if not resize:
        raise UserError(f"{path} is {img.shape[2]}x{img.shape[1]} but the model takes {w}x{h}: resize the samples to "
                        "the model's input size, or pass --resize")
    return np.stack([np.asarray(Image.fromarray(ch).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
                     for ch in img])
