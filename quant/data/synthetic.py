"""The embedded default dataset: seeded synthetic grayscale surfaces with defects.

Every image is a pure function of (seed, index, size, defect_fraction, difficulty):
its random numbers come from `numpy.random.Generator(PCG64)` streams spawned from
`SeedSequence([salt, seed, index])`, so image 17 is the same whether 100 or 10,000 images
are generated, and the PNG bytes are identical run to run (PIL, fixed settings, no
timestamps).

Surfaces (one per image, chosen at random):
  brushed  rolled/brushed metal: anisotropic streaks along a near-axis direction
  cast     cast metal: blotchy 1/f background plus granular grain
  woven    textile: plain or twill weave with per-thread brightness and positional jitter
then illumination drift (linear gradient, vignetting), brightness/contrast variation,
a slight optical blur and sensor noise (read + shot noise).

Defects (each with a pixel mask, drawn before illumination so contrast follows the light):
  scratch    thin, long, possibly curved line, bright or dark, fading at the ends
  pit        one to four small dark/bright blobs (some with a bright rim), 1-5 px across
  crack      dark jagged polyline with one to three thinner branches
  inclusion  irregular blob whose texture and brightness differ from the surface

Difficulty. `difficulty` in [0, 1] (recipe key dataset.difficulty, default 0.1) sets how
many defects sit at the noise floor and how faint and small the rest are. A defect's
contrast is measured in "clutter units": the std of the surface's fine texture (high-pass)
plus sensor noise, so an amplitude is about equally visible on every surface (inclusions,
which compete with coarse blotches and weave, use the full texture std instead).
  - subtle, with probability 0.05 + 0.45*difficulty: 0.8-2.5 clutter units, often invisible
    to any classifier, so nothing reaches 100 %;
  - otherwise log-uniform in [8*(1-0.6d), 30*(1-0.5d)] clutter units (inclusions: 0.45x
    that in texture std, capped at 5), with pit, inclusion and scratch sizes shrinking as d
    grows. The strongest saturate like a specular scratch or a deep crack; a small CNN
    trained a few epochs leans on them (capping all contrasts at 5 texture std cut the
    accuracy below from 0.93 to 0.74-0.85).
Calibration (3000 images, 64x64, float resnet8 through quant.train.fit with the default
TrainConfig, 6 epochs, test accuracy at argmax): d=0.0 -> 0.94, d=0.1 -> 0.93-0.94
(two seeds; AUROC 0.93-0.97), d=0.5 -> 0.85, d=1.0 -> 0.75 (chance: all ok).

Labels. Which images are defective, and of which type, follows two low-discrepancy
(Weyl) sequences offset by the seed: any prefix of N images holds `defect_fraction * N`
defective images to within a few, with the four types near-equal, for any N.

Layout written by `generate` (readable by the generic folder loader):
  <root>/<class>/<name>.png          class in ok, scratch, pit, crack, inclusion
  <root>/masks/<class>/<name>.png    uint8 0/255, same size (all zero for ok)
  <root>/labels.csv                  file, binary_label, defect_type, texture
  <root>/meta.json                   params, seed, counts (written last)
`<name>` is the zero-padded image index (`00017.png` is `render(17, ...)`).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from core.atomic import atomic_dir
from core.errors import UserError

GENERATOR_VERSION = 2  # bump whenever the pixels change: it is part of the cache key
CLASSES = ("ok", "scratch", "pit", "crack", "inclusion")
DEFECT_TYPES = CLASSES[1:]
TEXTURES = ("brushed", "cast", "woven")
DEFAULT_DIFFICULTY = 0.1  # matches DatasetConfig.difficulty; see "Difficulty" above

_SALT = 0x51D3F  # separates these streams from any other use of the same seed
_ALPHA = 0.6180339887498949  # golden ratio - 1: defective or not
_BETA = 0.41421356237309515  # sqrt(2) - 1: which defect type
_PNG = {"format": "PNG", "compress_level": 6, "optimize": False}


# --------------------------------------------------------------------------- labels


def _label_offsets(seed: int) -> tuple[float, float]:
    state = np.random.SeedSequence([_SALT, seed % 2**64, 0xA11CE]).generate_state(2, np.uint64)
    return float(state[0] >> np.uint64(11)) / 2**53, float(state[1] >> np.uint64(11)) / 2**53


def assign_classes(indices: np.ndarray, seed: int, defect_fraction: float) -> np.ndarray:
    """Class index (into CLASSES) of each image index; 0 is ok."""
    idx = np.asarray(indices, dtype=np.float64)
    o1, o2 = _label_offsets(seed)
    u = np.mod(idx * _ALPHA + o1, 1.0)
    t = np.mod(idx * _BETA + o2, 1.0)
    kind = 1 + np.minimum((t * len(DEFECT_TYPES)).astype(np.int64), len(DEFECT_TYPES) - 1)
    return np.where(u < defect_fraction, kind, 0)


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=16)
def _freqs(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return fy, fx


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _unit(a: np.ndarray) -> np.ndarray:
    s = a.std()
    return (a - a.mean()) / s if s > 1e-12 else a - a.mean()


def _shaped(rng: np.random.Generator, shape: tuple[int, int], filt: np.ndarray) -> np.ndarray:
    """White noise filtered in the frequency domain, zero mean, unit std (periodic)."""
    white = rng.standard_normal(shape)
    return _unit(np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape))


def _gauss_filt(h: int, w: int, sigma: float) -> np.ndarray:
    fy, fx = _freqs(h, w)
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (fx**2 + fy**2))


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


# --------------------------------------------------------------------------- textures


def _brushed(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    fy, fx = _freqs(h, w)
    theta = rng.choice([0.0, np.pi / 2], p=[0.7, 0.3]) + rng.normal(0, 0.06)
    c, s = np.cos(theta), np.sin(theta)
    f_par = fx * c + fy * s
    f_perp = -fx * s + fy * c

    def streaks(s_par, s_perp):
        return np.exp(-2.0 * np.pi**2 * (s_par**2 * f_par**2 + s_perp**2 * f_perp**2))

    fine = _shaped(rng, (h, w), streaks(rng.uniform(8, 30), rng.uniform(0.4, 0.9)))
    coarse = _shaped(rng, (h, w), streaks(rng.uniform(25, 80), rng.uniform(2.0, 5.0)))
    grain = _shaped(rng, (h, w), _gauss_filt(h, w, 0.6))
    return _unit(fine + rng.uniform(0.3, 0.9) * coarse + rng.uniform(0.1, 0.35) * grain)


def _cast(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    fy, fx = _freqs(h, w)
    f2 = fx**2 + fy**2
    beta = rng.uniform(1.4, 2.2)
    blotch = _shaped(rng, (h, w), (f2 + (1.0 / 40) ** 2) ** (-beta / 2))
    grain = _shaped(rng, (h, w), _gauss_filt(h, w, rng.uniform(0.6, 1.3)))
    t = rng.uniform(0.4, 0.9) * blotch + rng.uniform(0.6, 1.0) * grain
    # sand-cast look: slightly skewed toward dark pores, not posterised
    g = rng.uniform(0.2, 0.6)
    return _unit(np.tanh(t * g) / g)


def _woven(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    period = rng.uniform(3.5, 8.0)
    phi = rng.normal(0, 0.05)
    jitter = rng.uniform(0.2, 0.8)
    smooth = _gauss_filt(h, w, 6.0)
    dx = _shaped(rng, (h, w), smooth) * jitter
    dy = _shaped(rng, (h, w), smooth) * jitter
    x = xx * np.cos(phi) - yy * np.sin(phi) + dx + rng.uniform(0, period)
    y = xx * np.sin(phi) + yy * np.cos(phi) + dy + rng.uniform(0, period)
    u, v = x / period, y / period
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    iu = iu.astype(np.int64)
    iv = iv.astype(np.int64)
    n_threads = 512
    warp_b = 1.0 + 0.12 * rng.standard_normal(n_threads)
    weft_b = rng.uniform(0.85, 1.15) + 0.12 * rng.standard_normal(n_threads)
    repeat = 2 if rng.random() < 0.6 else 3  # plain or twill
    warp_on_top = np.mod(iu + iv, repeat) == 0
    gamma = rng.uniform(0.4, 0.9)
    pu = np.sin(np.pi * fu) ** gamma
    pv = np.sin(np.pi * fv) ** gamma
    warp = warp_b[np.mod(iu, n_threads)] * pu * (0.65 + 0.35 * np.sin(np.pi * fv))
    weft = weft_b[np.mod(iv, n_threads)] * pv * (0.65 + 0.35 * np.sin(np.pi * fu))
    t = np.where(warp_on_top, warp, weft)
    fibre = _shaped(rng, (h, w), _gauss_filt(h, w, 0.7))
    return _unit(t + rng.uniform(0.05, 0.2) * fibre)


_TEXTURE_FNS = {"brushed": _brushed, "cast": _cast, "woven": _woven}


# --------------------------------------------------------------------------- defect geometry


def _segments_profile(
    h: int, w: int, pts: np.ndarray, widths: np.ndarray, strengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Soft line profile of a polyline: max over segments of strength*exp(-d^2/2w^2).

    pts: (K+1, 2) as (y, x); widths, strengths: (K,). Returns (profile, core) where core is
    the distance test d <= width + 0.5 (where strength > 0.1) used for the mask.
    """
    prof = np.zeros((h, w))
    core = np.zeros((h, w), dtype=bool)
    margin = 3.0 * float(widths.max()) + 2.0
    y0 = int(max(0, np.floor(pts[:, 0].min() - margin)))
    y1 = int(min(h, np.ceil(pts[:, 0].max() + margin) + 1))
    x0 = int(max(0, np.floor(pts[:, 1].min() - margin)))
    x1 = int(min(w, np.ceil(pts[:, 1].max() + margin) + 1))
    if y0 >= y1 or x0 >= x1:
        return prof, core
    yy, xx = _grid(h, w)
    py = yy[y0:y1, x0:x1][..., None]
    px = xx[y0:y1, x0:x1][..., None]
    a, b = pts[:-1], pts[1:]
    d = b - a
    len2 = np.maximum((d**2).sum(1), 1e-9)
    t = np.clip(((py - a[:, 0]) * d[:, 0] + (px - a[:, 1]) * d[:, 1]) / len2, 0.0, 1.0)
    dist2 = (py - a[:, 0] - t * d[:, 0]) ** 2 + (px - a[:, 1] - t * d[:, 1]) ** 2
    prof[y0:y1, x0:x1] = (strengths * np.exp(-dist2 / (2.0 * widths**2))).max(-1)
    core[y0:y1, x0:x1] = ((dist2 <= (widths + 0.5) ** 2) & (strengths > 0.1)).any(-1)
    return prof, core


def _subtle_fraction(difficulty: float) -> float:
    return 0.05 + 0.45 * difficulty


def _contrast(rng: np.random.Generator, difficulty: float, unit: float, scale: float = 1.0) -> float:
    """Defect amplitude in clutter units (see the module docstring: Difficulty)."""
    if rng.random() < _subtle_fraction(difficulty):
        k = _loguniform(rng, 0.8, 2.5)  # at the noise/texture floor: often invisible
    else:
        k = _loguniform(rng, 8.0 * (1.0 - 0.6 * difficulty), 30.0 * (1.0 - 0.5 * difficulty))
    return unit * scale * k


def _scratch(rng, h, w, t, difficulty, unit):
    m = min(h, w)
    length = rng.uniform(0.3, 1.0) * np.hypot(h, w) * (1.0 - 0.4 * difficulty * rng.random())
    mid_pt = np.array([rng.uniform(0.1, 0.9) * (h - 1), rng.uniform(0.1, 0.9) * (w - 1)])
    theta = rng.uniform(0, 2 * np.pi)
    curvature = rng.normal(0, 0.8 / max(m, 16)) if rng.random() < 0.6 else 0.0
    n = max(4, int(length / 2.0))
    s = np.linspace(-length / 2, length / 2, n + 1)  # arc length from the middle
    ang = theta + curvature * s + rng.normal(0, 0.01, n + 1).cumsum()
    steps = np.stack([np.sin(ang), np.cos(ang)], 1) * (length / n)
    pts = np.vstack([[0, 0], np.cumsum(steps[:-1], 0)])
    pts = pts - pts[n // 2] + mid_pt
    # fade in/out along its length, like a tool lifting off the surface
    u = 0.5 * (s[:-1] + s[1:]) / length + 0.5
    fade = np.clip(np.minimum(u, 1 - u) / rng.uniform(0.05, 0.3), 0, 1)
    strengths = fade * (0.7 + 0.3 * rng.random(n))
    widths = np.full(n, rng.uniform(0.35, 0.9))
    prof, core = _segments_profile(h, w, pts, widths, strengths)
    if not core.any():  # only the faded tips inside: mark the strongest pixel
        core[np.unravel_index(int(np.argmax(prof)), prof.shape)] = True
    sign = 1.0 if rng.random() < 0.6 else -1.0
    return t + sign * _contrast(rng, difficulty, unit) * prof, core


def _pit(rng, h, w, t, difficulty, unit):
    yy, xx = _grid(h, w)
    n = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
    centre = np.array([rng.uniform(0.06, 0.94) * (h - 1), rng.uniform(0.06, 0.94) * (w - 1)])
    spread = rng.uniform(2, 10)
    amp = _contrast(rng, difficulty, unit)
    dark = rng.random() < 0.7
    out = t.copy()
    mask = np.zeros((h, w), dtype=bool)
    for i in range(n):
        c = centre if i == 0 else np.clip(centre + rng.normal(0, spread, 2), [0, 0], [h - 1, w - 1])
        sigma = _loguniform(rng, 0.8 - 0.3 * difficulty, 2.6 - 1.0 * difficulty)
        ecc = rng.uniform(0.7, 1.4)
        d2 = (yy - c[0]) ** 2 * ecc + (xx - c[1]) ** 2 / ecc
        blob = np.exp(-d2 / (2 * sigma**2))
        # the blur flattens tiny pits: real ones that small are deep, high-contrast holes
        a = amp * rng.uniform(0.6, 1.0) * min(2.5, (1.5 / sigma) ** 0.7)
        if dark and rng.random() < 0.35:  # crater: dark pit with a bright rim
            ring = np.exp(-((np.sqrt(d2) - 1.6 * sigma) ** 2) / (2 * (0.6 * sigma) ** 2))
            delta = 0.45 * ring - 1.1 * blob
            m = np.abs(delta) > 0.15 * np.abs(delta).max()  # the pit and its rim
        else:
            delta = blob if not dark else -blob
            m = blob > 0.3
        out += a * delta
        m[int(round(c[0])), int(round(c[1]))] = True
        mask |= m
    return out, mask


def _crack(rng, h, w, t, difficulty, unit):
    m = min(h, w)
    length = rng.uniform(0.25, 0.75) * m * (1.0 - 0.3 * difficulty * rng.random()) + 4
    step = rng.uniform(1.2, 2.5)
    width = rng.uniform(0.35, 0.9)
    pts = [np.array([rng.uniform(0.15, 0.85) * (h - 1), rng.uniform(0.15, 0.85) * (w - 1)])]
    heading = rng.uniform(0, 2 * np.pi)
    n = max(3, int(length / step))
    jag = rng.uniform(0.3, 0.7)
    for _ in range(n):
        heading += rng.normal(0, jag)
        pts.append(pts[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    pts = np.array(pts)
    taper = np.clip(np.linspace(1.0, 0.4, n), 0, 1)
    all_prof, all_core = _segments_profile(h, w, pts, width * taper + 0.05, np.ones(n))
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, n))
        bh = np.arctan2(*(pts[k] - pts[k - 1])) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        bn = max(2, int(n * rng.uniform(0.2, 0.5)))
        bp = [pts[k]]
        for _ in range(bn):
            bh += rng.normal(0, jag)
            bp.append(bp[-1] + step * np.array([np.sin(bh), np.cos(bh)]))
        bw = width * 0.6 * np.linspace(1.0, 0.5, bn) + 0.05
        prof, core = _segments_profile(h, w, np.array(bp), bw, np.full(bn, 0.8))
        all_prof = np.maximum(all_prof, prof)
        all_core |= core
    return t - _contrast(rng, difficulty, unit) * all_prof, all_core


def _inclusion(rng, h, w, t, difficulty, unit):
    yy, xx = _grid(h, w)
    m = min(h, w)
    r = _loguniform(rng, 3.0 - 1.5 * difficulty, max(3.5, (0.22 - 0.08 * difficulty) * m))
    ry, rx = r * rng.uniform(0.6, 1.5), r * rng.uniform(0.6, 1.5)
    cy, cx = rng.uniform(0.1, 0.9) * (h - 1), rng.uniform(0.1, 0.9) * (w - 1)
    a = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(a) + dy * np.sin(a)) / rx
    v = (-dx * np.sin(a) + dy * np.cos(a)) / ry
    rough = _shaped(rng, (h, w), _gauss_filt(h, w, max(1.0, 0.4 * r)))
    rad = np.sqrt(u**2 + v**2) + rng.uniform(0.15, 0.35) * rough
    soft = np.clip((1.0 - rad) / 0.15, 0.0, 1.0)
    if not (soft > 0.5).any():
        soft[int(round(cy)), int(round(cx))] = 1.0
    grain = _shaped(rng, (h, w), _gauss_filt(h, w, rng.uniform(0.5, 1.5)))
    # a blob competes with the coarse texture (blotches, weave), so its contrast is in units
    # of the texture's full std (1), not of the fine clutter; capped: slag, not a hole
    amp = min(_contrast(rng, difficulty, 1.0, scale=0.45), 5.0)
    inside = t * rng.uniform(0.0, 0.6) + (amp if rng.random() < 0.5 else -amp) + rng.uniform(0.3, 1.0) * grain
    return t * (1 - soft) + inside * soft, soft > 0.5


_DEFECT_FNS = {"scratch": _scratch, "pit": _pit, "crack": _crack, "inclusion": _inclusion}


# --------------------------------------------------------------------------- rendering


def _streams(index: int, seed: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([_SALT, seed % 2**64, int(index)])
    return [np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(3)]


def _render(index: int, size: tuple[int, int], seed: int, kind: str, difficulty: float) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = size
    # separate streams: the surface, the defect and the sensor do not depend on each
    # other, so render(i, kind="ok") is exactly render(i, kind="pit") minus the pit.
    r_bg, r_def, r_noise = _streams(index, seed)
    texture = TEXTURES[int(r_bg.integers(len(TEXTURES)))]
    t = _TEXTURE_FNS[texture](r_bg, h, w)
    yy, xx = _grid(h, w)
    ny, nx = 2 * yy / max(h - 1, 1) - 1, 2 * xx / max(w - 1, 1) - 1
    illum = 1.0 + r_bg.uniform(-0.15, 0.15) * nx + r_bg.uniform(-0.15, 0.15) * ny
    cy, cx = r_bg.uniform(-0.5, 0.5, 2)
    illum = illum - r_bg.uniform(0.0, 0.3) * ((nx - cx) ** 2 + (ny - cy) ** 2) / 2
    level = r_bg.uniform(80, 170)
    contrast = r_bg.uniform(6, 16)
    blur = r_bg.uniform(0.3, 0.8)
    read = r_noise.uniform(1.0, 3.0)
    shot = r_noise.uniform(0.0, 0.25)
    z = r_noise.standard_normal((h, w))

    if kind == "ok":
        mask = np.zeros((h, w), dtype=bool)
    else:
        # Defect contrast is measured against what hides it: the fine texture (high-pass
        # std) plus sensor noise, both in texture units, so a given amplitude is about
        # equally visible on every surface.
        fine = (t - ndimage.gaussian_filter(t, 2.0, mode="wrap")).std()
        unit = float(np.sqrt(fine**2 + (read**2 + shot * level) / contrast**2))
        t, mask = _DEFECT_FNS[kind](r_def, h, w, t, difficulty, unit)

    img = (level + contrast * t) * illum
    img = ndimage.gaussian_filter(img, blur, mode="reflect", truncate=3.0)
    img = img + z * np.sqrt(read**2 + shot * np.maximum(img, 0))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), (mask.astype(np.uint8) * 255), texture


def _check_params(size, defect_fraction: float, difficulty: float) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UserError(f"dataset.size must be two integers (height, width), got {size!r}") from None
    if h < 8 or w < 8:
        raise UserError(f"dataset.size must be at least 8x8, got {h}x{w}")
    if not 0.0 < defect_fraction < 1.0:
        raise UserError(f"dataset.defect_fraction must be between 0 and 1 (exclusive), got {defect_fraction}")
    if not 0.0 <= difficulty <= 1.0:
        raise UserError(f"dataset.difficulty must be between 0 and 1, got {difficulty}")
    return h, w


def render(
    index: int,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    kind: str | None = None,
    *,
    defect_fraction: float = 0.25,
    difficulty: float = DEFAULT_DIFFICULTY,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One image: (uint8 [H,W] image, uint8 [H,W] mask 0/255, class name).

    kind=None takes the class the dataset gives this index; a class name in CLASSES forces
    it (same surface and noise, so the difference to kind="ok" is the defect alone).
    """
    h, w = _check_params(size, defect_fraction, difficulty)
    if kind is None:
        kind = CLASSES[int(assign_classes(np.array([index]), seed, defect_fraction)[0])]
    elif kind not in CLASSES:
        raise UserError(f"unknown synthetic class {kind!r}: choose one of {', '.join(CLASSES)}")
    img, mask, _ = _render(index, (h, w), seed, kind, difficulty)
    return img, mask, kind


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, **_PNG)
    return buf.getvalue()


def generate(
    root: Path,
    num_images: int,
    size: tuple[int, int] = (64, 64),
    defect_fraction: float = 0.25,
    seed: int = 0,
    *,
    difficulty: float = DEFAULT_DIFFICULTY,
) -> Path:
    """Write the dataset tree to `root` atomically (built beside it, then renamed)."""
    root = Path(root)
    h, w = _check_params(size, defect_fraction, difficulty)
    if int(num_images) < 1:
        raise UserError(f"dataset.num_images must be at least 1, got {num_images}")
    num_images = int(num_images)
    digits = max(5, len(str(num_images - 1)))
    classes = assign_classes(np.arange(num_images), seed, defect_fraction)
    counts = {c: 0 for c in CLASSES}
    tex_counts = {t: 0 for t in TEXTURES}
    rows = []
    with atomic_dir(root) as tmp:
        for c in CLASSES:
            (tmp / c).mkdir()
            (tmp / "masks" / c).mkdir(parents=True)
        for i in range(num_images):
            kind = CLASSES[int(classes[i])]
            img, mask, texture = _render(i, (h, w), seed, kind, difficulty)
            name = f"{i:0{digits}d}.png"
            (tmp / kind / name).write_bytes(_png(img))
            (tmp / "masks" / kind / name).write_bytes(_png(mask))
            rows.append((f"{kind}/{name}", int(kind != "ok"), kind if kind != "ok" else "none", texture))
            counts[kind] += 1
            tex_counts[texture] += 1
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("file", "binary_label", "defect_type", "texture"))
        writer.writerows(rows)
        (tmp / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
        meta = {
            "generator": "qdeploy.synthetic",
            "generator_version": GENERATOR_VERSION,
            "params": _params(num_images, (h, w), defect_fraction, difficulty),
            "seed": seed,
            "classes": list(CLASSES),
            "counts": counts,
            "textures": tex_counts,
            "defective": num_images - counts["ok"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root


def _params(num_images: int, size: tuple[int, int], defect_fraction: float, difficulty: float) -> dict:
    return {
        "num_images": int(num_images),
        "size": [int(size[0]), int(size[1])],
        "defect_fraction": float(defect_fraction),
        "difficulty": float(difficulty),
    }


def dataset_digest(num_images: int, size, defect_fraction: float, seed: int, difficulty: float = DEFAULT_DIFFICULTY) -> str:
    data = {**_params(num_images, size, defect_fraction, difficulty), "seed": int(seed), "version": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def ensure_generated(cfg, seed: int, cache_dir: Path, *, difficulty: float | None = None) -> Path:
    """The cached dataset for `cfg` (a DatasetConfig), generating it if absent or incomplete.

    difficulty=None takes cfg.difficulty when the config has one, else DEFAULT_DIFFICULTY.
    """
    if difficulty is None:
        difficulty = float(getattr(cfg, "difficulty", DEFAULT_DIFFICULTY))
    size = tuple(int(s) for s in cfg.size)
    root = Path(cache_dir) / f"synthetic-{dataset_digest(cfg.num_images, size, cfg.defect_fraction, seed, difficulty)}"
    meta_path = root / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if (
            meta
            and meta.get("generator_version") == GENERATOR_VERSION
            and meta.get("seed") == seed
            and meta.get("params") == _params(cfg.num_images, size, cfg.defect_fraction, difficulty)
        ):
            return root
    return generate(root, cfg.num_images, size, cfg.defect_fraction, seed, difficulty=difficulty)
