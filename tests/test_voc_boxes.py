"""VOC box annotations as masks (dataset.boxes): NEU-DET's real annotations, and bad files."""
import re

import numpy as np
import pytest

from core.errors import UserError
from quant.data.loaders import MaskSource, list_dataset
from quant.data.voc_boxes import box_mask, read_voc

VOC = """<annotation><size><width>{w}</width><height>{h}</height><depth>1</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def _write(path, w=20, h=10, boxes=((2, 3, 5, 4),)):
    objs = "".join(OBJ.format(n="scratch", x0=a, y0=b, x1=c, y1=d) for a, b, c, d in boxes)
    path.write_text(VOC.format(w=w, h=h, objects=objs))
    return path


def test_a_voc_box_is_its_inclusive_one_based_rectangle(tmp_path):
    voc = read_voc(_write(tmp_path / "a.xml", boxes=((2, 3, 5, 4), (10, 1, 10, 1))))
    assert voc.size == (10, 20)
    m = box_mask(voc, (10, 20))
    expect = np.zeros((10, 20), bool)
    expect[2:4, 1:5] = True  # rows 3..4, columns 2..5 (1-based, inclusive)
    expect[0, 9] = True
    assert np.array_equal(m, expect)
    # an image stored at twice the annotated size: the boxes scale with it
    assert np.array_equal(box_mask(voc, (20, 40)), np.kron(expect, np.ones((2, 2), bool)))


@pytest.mark.parametrize("text, says", [
    ("<annotation><object>", "is not valid XML"),
    (VOC.format(w=20, h=10, objects=OBJ.format(n="x", x0=5, y0=1, x1=2, y1=3)), "xmax < xmin"),
    (VOC.format(w=20, h=10, objects=OBJ.format(n="x", x0="a", y0=1, x1=2, y1=3)), "xmin is 'a'"),
    (VOC.format(w=20, h=10, objects="<object><name>x</name></object>"), "no <bndbox>"),
])
def test_a_bad_voc_file_is_named_in_one_line(tmp_path, text, says):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        read_voc(p)
    assert says in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_neu_boxes_become_the_masks_of_their_images(datasets_dir):
    neu = datasets_dir / "neu_det"
    listing = list_dataset("folder", neu / "images", (), boxes=neu / "annotations")
    with_boxes = [r for r in listing.records if r.mask is not None and r.mask.voc]
    assert len(with_boxes) >= 0.99 * len(listing.records)
    assert any("VOC boxes" in n for n in listing.notes)
    record = next(r for r in with_boxes if r.key.endswith("crazing_1.jpg"))
    text = (neu / "annotations" / "crazing_1.xml").read_text()
    x0, y0, x1, y1 = (int(re.search(f"<{k}>(\\d+)</{k}>", text).group(1)) for k in ("xmin", "ymin", "xmax", "ymax"))
    mask = MaskSource(record.mask, record.cls)((200, 200))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (y0 - 1, y1 - 1, x0 - 1, x1 - 1)


def test_a_missing_boxes_folder_is_said(tmp_path, datasets_dir):
    with pytest.raises(UserError, match="dataset.boxes .* is not a directory"):
        list_dataset("folder", datasets_dir / "neu_det" / "images", (), boxes=tmp_path / "nope")
