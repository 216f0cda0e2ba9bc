"""Pascal VOC box annotations (NEU-DET's annotations/<image>.xml) turned into defect masks.

Where a dataset has boxes but no pixel masks, the mask-supervised models train on the boxes'
rectangles (a box is a coarse mask: every pixel in it counts as defect), the usual weak
supervision of the segmentation-based inspection networks.

    read_voc(path) -> VocBoxes(size=(h, w) or None, boxes=((name, (top, left, bottom, right)), ...))
    box_mask(boxes, shape) -> bool [H, W]  (boxes scaled from the annotated size to `shape`)
    attach_boxes(records, folder, notes) -> records with MaskRef(boxes=...) where an XML exists
"""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError

MAX_XML_BYTES = 1 << 20  # a VOC file is a few hundred bytes; anything huge is not one


@dataclass(frozen=True)
class VocBoxes:
    size: tuple[int, int] | None  # (height, width) the boxes were drawn on, if the file says
    boxes: tuple[tuple[str, tuple[int, int, int, int]], ...]  # (class name, (top, left, bottom, right) exclusive)


def read_voc(path: Path) -> VocBoxes:
    """The boxes of one VOC file; VOC's 1-based inclusive corners become 0-based exclusive."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_XML_BYTES:
            raise UserError(f"box annotation {path} is larger than {MAX_XML_BYTES:,} bytes: not a VOC file")
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"box annotation {path} is not valid XML ({e}): fix or remove it") from None
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w is not None and h is not None:
        size = (_int(h, path, "size/height"), _int(w, path, "size/width"))
        if min(size) < 1:
            raise UserError(f"box annotation {path}: size {size[1]}x{size[0]} is empty: fix <size>")
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"box annotation {path}: object {i + 1} has no <bndbox>: fix or remove it")
        x0, y0, x1, y1 = (_int(bb.findtext(k), path, f"object {i + 1} {k}") for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 < x0 or y1 < y0:
            raise UserError(f"box annotation {path}: object {i + 1} has xmax < xmin or ymax < ymin: fix the box")
        boxes.append(((obj.findtext("name") or "").strip(), (y0 - 1, x0 - 1, y1, x1)))
    return VocBoxes(size, tuple(boxes))


def _int(text: str | None, path: Path, what: str) -> int:
    try:
        return int(round(float((text or "").strip())))
    except ValueError:
        raise UserError(f"box annotation {path}: {what} is {text!r}, not a number: fix the file") from None


def box_mask(voc: VocBoxes, shape: tuple[int, int]) -> np.ndarray:
    """The union of the boxes as a bool mask of `shape`, scaled from the annotated size."""
    h, w = shape
    sy, sx = (h / voc.size[0], w / voc.size[1]) if voc.size else (1.0, 1.0)
    out = np.zeros((h, w), dtype=bool)
    for _, (t, l, b, r) in voc.boxes:
        t, b = max(0, int(np.floor(t * sy))), min(h, int(np.ceil(b * sy)))
        l, r = max(0, int(np.floor(l * sx))), min(w, int(np.ceil(r * sx)))
        out[t:b, l:r] = True
    return out


def attach_boxes(records: list, folder: Path, ok_classes, notes: list[str]) -> list:
    """`records` with a box mask on each defect record that has no mask and a <stem>.xml in
    `folder` (dataset.boxes); the files are read when the masks are, not here."""
    from quant.data.loaders import MaskRef

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"dataset.boxes {folder} is not a directory: give the folder of VOC .xml files (e.g. annotations/)")
    xml = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".xml" and p.is_file()}
    out, attached, missing = [], 0, []
    for r in records:
        if r.mask is None and r.cls not in ok_classes:
            p = xml.get(Path(r.path).stem)
            if p is not None:
                r = dataclasses.replace(r, mask=MaskRef(voc=str(p)))
                attached += 1
            else:
                missing.append(r.key)
        out.append(r)
    notes.append(f"{attached} defect images get their mask from the VOC boxes in {folder} (a box's rectangle counts as defect)"
                 + (f"; {len(missing)} have no .xml there (e.g. {missing[0]}) and train on their image label alone"
                    if missing else ""))
    if not attached:
        raise UserError(f"dataset.boxes {folder}: no <image name>.xml for any defect image (e.g. {missing[0] if missing else '?'}): "
                        "check the folder")
    return out
