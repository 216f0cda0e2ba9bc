"""Magnetic tile (or any images/<Class>/x.jpg + masks/<Class>/x.png layout) with pixel masks,
as fixed-size uint8 arrays for segmentation-supervised training (quant/models/segdec.py).

    data = load_masked_dataset("/work/shared/datasets/magnetic_tile", size=(256, 384))
    data.images  uint8 [N, 1, H, W]     data.masks  bool [N, 1, H, W]
    data.labels  int [N] class index    data.class_names, data.names, data.ok_index
    data.has_mask bool [N]: the mask is usable as pixel supervision. False for a defective
                  image whose mask is empty (4 "Uneven" images of magnetic tile): such an
                  image is trained with its image label only (mixed supervision).
    tr, va, te = stratified_split(data.labels, seed=0, fractions=(0.6, 0.2, 0.2))

Geometry: images taller than wide are first turned a quarter (np.rot90; magnetic tile has
aspect h/w from 0.37 to 2.8, so this halves the spread), then letterboxed into (H, W):
aspect kept, scaled to fit, centred, padded with the mean border value (images.letterbox).
The mask takes the same rotation, scale and offset; it is resized bilinearly and a pixel is
defect when it is covered by at least `MASK_COVER` of a defect pixel, so a 5 px blowhole
shrunk to 4 px stays in the mask (nearest-neighbour resizing drops some of them).
"raw" keeps the native pixels: no rescale, crop/pad to (H, W) centred (images larger
than (H, W) are cropped, which can cut a defect off: only for experiments).

The arrays are cached in cache_dir (None: no cache) keyed by the dataset
path, file list, size and geometry, so a rerun loads in ~1 s instead of decoding ~1,300 JPEGs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from quant.data.images import read_gray, stretch

MASK_COVER = 0.25  # fraction of a resized mask pixel that must be defect
OK_CLASS_NAMES = ("Free", "good", "ok", "OK")


@dataclass
class MaskedDataset:
    images: np.ndarray  # uint8 [N,1,H,W]
    masks: np.ndarray  # bool [N,1,H,W]
    labels: np.ndarray  # int64 [N]
    has_mask: np.ndarray  # bool [N]
    class_names: list[str]
    names: list[str]  # "<Class>/<file>"
    ok_index: int

    @property
    def defect(self) -> np.ndarray:
        return self.labels != self.ok_index

    def subset(self, idx: np.ndarray) -> "MaskedDataset":
        return MaskedDataset(self.images[idx], self.masks[idx], self.labels[idx], self.has_mask[idx],
                             self.class_names, [self.names[i] for i in idx], self.ok_index)


def _list(root: Path) -> list[tuple[str, Path, Path]]:
    out = []
    for cls in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
        for img in sorted((root / "images" / cls).glob("*.jpg")) + sorted((root / "images" / cls).glob("*.png")):
            out.append((cls, img, root / "masks" / cls / (img.stem + ".png")))
    if not out:
        raise FileNotFoundError(f"no images under {root}/images/<Class>/")
    return out


def _place(gray: np.ndarray, mask: np.ndarray, size: tuple[int, int], geometry: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    src_h, src_w = gray.shape
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    img_out = np.full((h, w), int(np.rint(border.mean())), dtype=np.uint8)
    mask_out = np.zeros((h, w), dtype=bool)
    if geometry == "raw":
        ch, cw = min(h, src_h), min(w, src_w)
        sy, sx = (src_h - ch) // 2, (src_w - cw) // 2
        ty, tx = (h - ch) // 2, (w - cw) // 2
        img_out[ty:ty + ch, tx:tx + cw] = gray[sy:sy + ch, sx:sx + cw]
        mask_out[ty:ty + ch, tx:tx + cw] = mask[sy:sy + ch, sx:sx + cw]
        return img_out, mask_out
    if geometry == "resize":
        nh, nw, top, left = h, w, 0, 0
    else:  # letterbox
        scale = min(h / src_h, w / src_w)
        nh, nw = min(h, max(1, round(src_h * scale))), min(w, max(1, round(src_w * scale)))
        top, left = (h - nh) // 2, (w - nw) // 2
    img_out[top:top + nh, left:left + nw] = np.asarray(
        Image.fromarray(gray).resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.uint8)
    m = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((nw, nh), Image.Resampling.BILINEAR))
    mask_out[top:top + nh, left:left + nw] = m >= MASK_COVER
    return img_out, mask_out


def load_masked_dataset(root: str | Path, size: tuple[int, int] = (256, 384), geometry: str = "letterbox",
                        rotate_portrait: bool = True, cache_dir: Path | None = None,
                        normalize: str = "none") -> MaskedDataset:
    """normalize: "none" | "stretch" (per-image 1-99 percentile contrast stretch, before placing)."""
    root = Path(root)
    if geometry not in ("letterbox", "resize", "raw"):
        raise ValueError(f"geometry must be letterbox|resize|raw, got {geometry!r}")
    files = _list(root)
    key = hashlib.sha256(repr((str(root.resolve()), [str(f[1]) for f in files], tuple(size), geometry,
                               rotate_portrait, MASK_COVER, normalize)).encode()).hexdigest()[:16]
    class_names = sorted({f[0] for f in files})
    ok = [c for c in class_names if c in OK_CLASS_NAMES]
    ok_index = class_names.index(ok[0]) if ok else -1
    labels = np.array([class_names.index(f[0]) for f in files], dtype=np.int64)
    names = [f"{f[0]}/{f[1].name}" for f in files]
    cache = None if cache_dir is None else Path(cache_dir) / f"{root.name}_{size[0]}x{size[1]}_{geometry}_{normalize}_{key}.npz"
    if cache is not None and cache.exists():
        z = np.load(cache)
        images, masks = z["images"], np.unpackbits(z["masks"], count=len(files) * size[0] * size[1])
        masks = masks.reshape(len(files), 1, *size).astype(bool)
    else:
        images = np.zeros((len(files), 1, *size), dtype=np.uint8)
        masks = np.zeros((len(files), 1, *size), dtype=bool)
        for i, (_, img, msk) in enumerate(files):
            g = read_gray(img)
            m = read_gray(msk) > 127 if msk.exists() else np.zeros_like(g, dtype=bool)
            if m.shape != g.shape:
                raise ValueError(f"{msk}: mask shape {m.shape} != image shape {g.shape}")
            if normalize == "stretch":
                g = stretch(g)
            if rotate_portrait and g.shape[0] > g.shape[1]:
                g, m = np.ascontiguousarray(np.rot90(g)), np.ascontiguousarray(np.rot90(m))
            images[i, 0], masks[i, 0] = _place(g, m, size, geometry)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, masks=np.packbits(masks.reshape(-1)))
            tmp.replace(cache)
    defect = labels != ok_index
    has_mask = ~defect | masks.reshape(len(files), -1).any(1)
    return MaskedDataset(images, masks, labels, has_mask, class_names, names, ok_index)


def stratified_split(labels: np.ndarray, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """Seeded split of indices stratified by class label (all classes, not just defect/ok)."""
    fr = np.asarray(fractions, dtype=np.float64)
    fr = fr / fr.sum()
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=fr[0], stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=fr[1] / (fr[1] + fr[2]), stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)
