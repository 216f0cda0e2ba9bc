"""ImageSet: a torch Dataset of uint8 grayscale images decoded lazily from disk.

It holds only paths and metadata (label, key, tile crop); pixels are decoded on first
access. When the whole set fits in `cache_bytes` (default 256 MB: the default dataset is
tiny) decoded images are kept in memory; otherwise every access decodes again, with a
small LRU of whole source images so consecutive tiles of one strip decode it once.
Picklable for DataLoader workers (the caches are not pickled: each worker fills its own).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from quant.data.images import Box, fit, fit_mask, image_size, read_gray, stretch

DEFAULT_CACHE_BYTES = 256 * 2**20
SOURCE_LRU = 4  # decoded source images kept when streaming (tiles of one strip)


class ImageSet(Dataset):
    """Item i -> (uint8 tensor [1, H, W], int label).

    masks: per item, a callable `shape -> bool [H, W]` giving the item's defect mask at its
    source image's size (quant.data.loaders.MaskRef.layers), or None where no mask is known.
    `mask(i)` brings it to the model size like its image. normalize: "stretch" applies the
    per-image contrast stretch (images.stretch) to every item, as every deployed model sees it.
    orient: "landscape" turns an image whose long side disagrees with the input's a quarter.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], keys: Sequence[str], size: tuple[int, int],
                 geometry: str = "resize", boxes: Sequence[Box | None] | None = None,
                 class_names: Sequence[str] = (), cache_bytes: int = DEFAULT_CACHE_BYTES,
                 masks: Sequence | None = None, normalize: str = "none", orient: str = "keep"):
        n = len(paths)
        if not (len(labels) == len(keys) == n) or (boxes is not None and len(boxes) != n) \
                or (masks is not None and len(masks) != n):
            raise ValueError("paths, labels, keys, boxes and masks must have the same length")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(n)
        self.keys = list(keys)
        self.size = (int(size[0]), int(size[1]))
        self.geometry = geometry
        self.boxes: list[Box | None] = list(boxes) if boxes is not None else [None] * n
        self.class_names = tuple(class_names)
        self.cache_bytes = cache_bytes
        self.masks = list(masks) if masks is not None else [None] * n
        self.normalize = normalize
        self.orient = orient
        self._init_caches()

    @property
    def cached(self) -> bool:
        """Whether decoded images are kept in memory (the whole set fits the budget)."""
        return len(self) * self.size[0] * self.size[1] <= self.cache_bytes

    def _init_caches(self) -> None:
        self._cache: dict[int, np.ndarray] = {}
        self._sources: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_cache"], state["_sources"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_caches()

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        counts = np.bincount(self.labels, minlength=len(self.class_names)) if len(self) else []
        per_class = ", ".join(f"{c}={n}" for c, n in zip(self.class_names, counts)) or f"{len(self)} images"
        return f"ImageSet({len(self)} x {self.size[0]}x{self.size[1]}, {per_class})"

    def _source(self, path: str) -> np.ndarray:
        if path in self._sources:
            self._sources.move_to_end(path)
            return self._sources[path]
        gray = read_gray(path)
        self._sources[path] = gray
        if len(self._sources) > SOURCE_LRU:
            self._sources.popitem(last=False)
        return gray

    def pixels(self, i: int) -> np.ndarray:
        """uint8 [H, W] of item i (read-only when cached: copy before modifying)."""
        i = int(i)
        if i < 0:
            i += len(self)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        box = self.boxes[i]
        gray = self._source(self.paths[i]) if box is not None else self._oriented(read_gray(self.paths[i]))
        if self.normalize == "stretch":  # on the image itself: the letterbox border is then its own
            gray = stretch(gray)
        out = np.ascontiguousarray(fit(gray, self.size, self.geometry, box))
        if self.cached:
            out.flags.writeable = False
            self._cache[i] = out
        return out

    def _oriented(self, a: np.ndarray) -> np.ndarray:
        """orient "landscape": an image whose long side disagrees with the model input's is
        turned a quarter (a portrait tile into a landscape input), its mask with it."""
        if self.orient == "keep" or self.size[0] == self.size[1]:
            return a
        return np.rot90(a) if (a.shape[0] > a.shape[1]) != (self.size[0] > self.size[1]) else a

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self.masks)

    def mask(self, i: int) -> np.ndarray | None:
        """bool [H, W] defect mask of item i at the model size, or None when none is known."""
        source = self.masks[int(i)]
        if source is None:
            return None
        box = self.boxes[int(i)]
        if box is not None:
            return fit_mask(source(self._source(self.paths[i]).shape), self.size, self.geometry, box)
        shape = image_size(self.paths[i])
        return fit_mask(self._oriented(source(shape)), self.size, self.geometry)

    def mask_array(self, indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bool [N, 1, H, W] masks, bool [N] known) of the given items (all by default)."""
        indices = range(len(self)) if indices is None else indices
        out = np.zeros((len(indices), 1, *self.size), dtype=bool)
        known = np.zeros(len(indices), dtype=bool)
        for k, i in enumerate(indices):
            m = self.mask(i)
            if m is not None:
                out[k, 0], known[k] = m, True
        return out, known

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.pixels(i).copy()).unsqueeze(0), int(self.labels[i])

    def array(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """uint8 [N, 1, H, W] of the given items (all by default)."""
        indices = range(len(self)) if indices is None else indices
        out = np.empty((len(indices), 1, *self.size), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k, 0] = self.pixels(i)
        return out

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        idx = [int(i) for i in indices]
        return ImageSet([self.paths[i] for i in idx], self.labels[idx], [self.keys[i] for i in idx], self.size,
                        self.geometry, [self.boxes[i] for i in idx], self.class_names, self.cache_bytes,
                        [self.masks[i] for i in idx], self.normalize, self.orient)


def stack_pixels(images: ImageSet, limit: int | None = None) -> np.ndarray:
    """The first `limit` (default: all) images of a set as one uint8 array [N,1,H,W]."""
    n = len(images) if limit is None else min(limit, len(images))
    return np.stack([images.pixels(i) for i in range(n)])[:, None]
