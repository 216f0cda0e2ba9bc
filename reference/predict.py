"""`qdeploy predict`: a deployed model on new images, through the parity harness's runner.

    run_predict(ctx, target, inputs, out_dir=None) -> dict (the sidecar)

Images of any size are decoded and fitted to the recipe's input exactly as the training
data was (quant.data.imageset.ImageSet: orientation, contrast stretch, then resize /
letterbox, or tiles cut along the long side); the model runs through `reference.twins.runner_for` (the function the parity
report runs, so predict and parity cannot drift apart); the decision is taken at the
stored operating threshold of that model, as the parity report's operating-point metrics
are. A tiled image is flagged when any of its tiles is; its score is its highest tile's.

Written (atomically) to <build>/<recipe>/predict/<target>/ unless --out says otherwise:
  predictions.csv   file, defect_score, decision, class, mask_rle (a localising model's
                    defect map > 0 at the model input, Severstal-style RLE; else empty)
  predictions.json  which runner ran where (hardware or twin), threshold, classes, recipe
  overlays/*.png    Grad-CAM heatmaps over the flagged images (float and qat models: the
                    torch models Grad-CAM can take gradients of)
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from core import layout
from core.atomic import write_json, write_text
from core.console import console
from core.errors import UserError
from quant import metrics
from quant.data.images import image_size, is_image_file, tile_boxes
from reference import twins as tw
from reference.inputs import Inputs

KEYS = ("fpga", "npu", "gpu", "qat", "float")
COLUMNS = ("file", "defect_score", "decision", "class", "mask_rle")
MAX_OVERLAYS = 64  # Grad-CAM overlays written per run (the flagged images first)
BATCH = 256


def list_images(inputs: list[str]) -> list[tuple[str, Path]]:
    """(name for the CSV, path) of every image: files as given, folders searched recursively
    (name relative to the folder)."""
    if not inputs:
        raise UserError("predict needs images: give image files or a folder of them")
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if is_image_file(q))
            if not found:
                raise UserError(f"{p} holds no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff)")
            out += [(q.relative_to(p).as_posix(), q) for q in found]
        elif p.is_file():
            if not is_image_file(p):
                raise UserError(f"{p} is not an image file (.png, .jpg, .jpeg, .bmp, .tif, .tiff)")
            out.append((p.as_posix(), p))
        else:
            raise UserError(f"{p} not found: give image files or a folder of them")
    return out


def samples(paths: list[Path], dataset) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [M, 1, H, W] model inputs and, per input, the index of its image (tiles: several),
    through quant.data.imageset.ImageSet: the same decode, orientation, contrast stretch and
    resize / letterbox / tiles as the training data."""
    from quant.data.imageset import ImageSet

    size = tuple(dataset.size)
    owner, boxes, files = [], [], []
    for i, path in enumerate(paths):
        tiles = tile_boxes(*image_size(path), size) if dataset.resize == "tile" else [None]
        for box in tiles:
            owner.append(i)
            boxes.append(box if len(tiles) > 1 else None)
            files.append(str(path))
    images = ImageSet(files, np.zeros(len(files), np.int64), files, size, dataset.resize, boxes,
                      cache_bytes=0, normalize=dataset.normalize, orient=dataset.orient)
    return images.array(), np.asarray(owner)


def decide(logits: np.ndarray, owner: np.ndarray, n_images: int, runner: tw.ModelRunner):
    """Per image: (defect score or None, flagged, class name) at the stored operating point,
    decided by quant.metrics.op_predictions (as the parity report's operating-point metrics);
    a tiled image takes its highest-scoring tile."""
    scores, flagged, pred = metrics.op_predictions(logits, runner.ok_index, runner.threshold)
    rank = scores if scores is not None else np.asarray(logits).max(1)
    out = []
    for i in range(n_images):
        rows = np.flatnonzero(owner == i)
        best = rows[np.argmax(rank[rows])]
        out.append((None if scores is None else float(scores[best]), bool(flagged[rows].any()),
                    runner.class_names[int(pred[best])]))
    return out


def to_csv(names: list[str], decisions, masks: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for k, (name, (score, flagged, cls)) in enumerate(zip(names, decisions)):
        w.writerow([name, "" if score is None else f"{score:.6f}", "defect" if flagged else "ok", cls,
                    masks[k] if masks is not None else ""])
    return buf.getvalue()


def mask_rles(maps: np.ndarray, owner: np.ndarray, n_images: int, size: tuple[int, int]) -> list[str]:
    """Per image, the defect map > 0 (upsampled to the model input) as Severstal-style RLE
    (column-major, 1-indexed); a tiled image: its first tile's (tiles are per-tile masks)."""
    from quant.data.rle import rle_encode
    from quant.train_seg import upsample

    out = []
    for i in range(n_images):
        row = int(np.flatnonzero(owner == i)[0])
        out.append(rle_encode(upsample(maps[row:row + 1], size)[0, 0] > 0))
    return out


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _overlays(runner: tw.ModelRunner, pixels, owner, names, decisions, out_dir: Path, maps=None) -> list[str]:
    """Over each flagged image (its highest-scoring tile): a localising model's own defect map
    (any target: the FPGA's from its integer execution), else Grad-CAM of the predicted class."""
    from reference.cams import CamSample, grad_cam, plot_overlays

    if runner.model is None and maps is None:
        return []
    flagged = [i for i, (_, f, _) in enumerate(decisions) if f][:MAX_OVERLAYS]
    written = []
    classes = list(runner.class_names)
    for i in flagged:
        row = int(np.flatnonzero(owner == i)[0])
        k = classes.index(decisions[i][2])
        if maps is not None:
            from quant.train_seg import defect_probability

            heat = defect_probability(maps[row:row + 1], pixels.shape[2:])
        else:
            heat = grad_cam(runner.model, pixels[row:row + 1], np.array([k]))
        sample = CamSample(i, k, k, float(decisions[i][0] or 1.0))
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(names[i]).with_suffix("").as_posix())
        path = plot_overlays(pixels[row:row + 1], heat, [sample], classes,
                             f"{names[i]}: {decisions[i][2]} ({runner.label})", out_dir / f"{stem}.png")
        written.append(path.name)
    return written


def run_predict(ctx: Inputs, target: str, inputs: list[str], out_dir: Path | None = None) -> dict:
    if target not in KEYS:
        raise UserError(f"unknown --target {target!r}; valid: {', '.join(KEYS)}")
    if target in ("fpga", "npu", "gpu") and not ctx.layout.finished(target):
        raise UserError(f"no finished {target} build in {ctx.stage_dir(target)}: run 'make target={target} build' first")
    images = list_images(inputs)
    runner = tw.runner_for(ctx, target)
    r = ctx.recipe
    names, paths = [n for n, _ in images], [p for _, p in images]
    pixels, owner = samples(paths, r.dataset)
    where = ("on the device itself" if runner.hardware else "its twin on this CPU (no device here)"
             if target in tw.RUNNERS else "the trained torch model")
    console.print(f"predict: {len(paths)} images ({len(pixels)} model inputs) with {runner.label}: "
                  f"{runner.runtime} on {runner.device}, {where}")
    masks = maps = None
    if runner.run_maps is not None:  # a localising model: its defect map, from the same execution
        runs = [runner.run_maps(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)]
        logits = np.concatenate([a for a, _ in runs])
        maps = np.concatenate([b for _, b in runs])
        masks = mask_rles(maps, owner, len(paths), tuple(r.dataset.size))
    else:
        logits = np.concatenate([runner.run(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)])
    decisions = decide(logits, owner, len(paths), runner)
    out_dir = Path(out_dir) if out_dir is not None else ctx.layout.predict_dir(target)
    csv_path = write_text(out_dir / layout.PREDICTIONS, to_csv(names, decisions, masks))
    overlay_dir = out_dir / layout.OVERLAY_DIR
    overlays = _overlays(runner, pixels, owner, names, decisions, overlay_dir, maps)
    flagged = sum(f for _, f, _ in decisions)
    meta = {"schema": "qdeploy.predictions/1", "recipe": r.name, "target": target, "model": runner.label,
            "ran_on": "hardware" if runner.hardware else "twin" if target in tw.RUNNERS else "torch", "runtime": runner.runtime, "device": runner.device,
            "precision": runner.precision, "threshold": runner.threshold, "classes": list(runner.class_names),
            "ok_index": runner.ok_index, "geometry": r.dataset.resize, "input_size": list(r.dataset.size),
            "images": len(paths), "model_inputs": int(len(pixels)), "flagged": int(flagged),
            "columns": list(COLUMNS),
            "mask_rle": (f"the defect map > 0 at the model input ({r.dataset.size[0]}x{r.dataset.size[1]}, after "
                         f"{r.dataset.resize}), RLE column-major 1-indexed" if masks is not None
                         else "empty: the model does not localise"),
            "overlays": [f"{layout.OVERLAY_DIR}/{n}" for n in overlays], "extra": runner.extra}
    write_json(out_dir / layout.PREDICTIONS_META, meta)
    thr = "argmax" if runner.threshold is None else f"threshold {runner.threshold:.4f}"
    console.print(f"predict: {flagged} of {len(paths)} flagged defect at the operating point ({thr}); "
                  f"{csv_path} (+ {layout.PREDICTIONS_META}" + (f", {len(overlays)} overlays)" if overlays else ")"))
    return meta
