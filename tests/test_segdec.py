"""The segmentation-supervised defect model (quant/models/segdec.py) and what feeds it: masks
carried to the model size with their images (any aspect, letterbox, quarter turns), the
pixel metrics, and the step-budget training with masks (quant/train_seg.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.data.images import fit, fit_mask
from quant.models import create_model, model_info
from quant.models.layers import Bits
from quant.models.segdec import DecisionOnly, create_segdec
from quant.train_seg import map_target, pixel_metrics


@pytest.mark.parametrize("bits", [None, Bits(4, 4, 8)], ids=["float", "w4a4"])
def test_two_outputs_on_a_non_square_input(bits):
    torch.manual_seed(0)
    model = create_segdec(in_size=(64, 96), width=0.25, bits=bits, avg="trunc").eval()
    x = torch.rand(3, 1, 64, 96)
    with torch.no_grad():
        logits, seg = model(x)
        alone = DecisionOnly(model)(x)
    assert logits.shape == (3, 2) and seg.shape == (3, 1, 8, 12)  # the map at 1/8 resolution
    assert torch.equal(alone, logits)  # the export wrapper computes the same decision


def test_the_registry_builds_float_and_qat_twins_with_the_same_keys():
    assert model_info("segdec").segmentation and model_info("segdec").fpga_lowerable
    q = create_model("segdec", 2, (64, 160), width=0.5)
    f = create_model("segdec", 2, (64, 160), width=0.5, quantized=False)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items() if "quant" not in k}  # noqa: E731
    assert {k: s for k, s in shapes(q).items() if k in shapes(f)} == shapes(f)  # float weights load into QAT


@pytest.mark.parametrize("geometry", ["resize", "letterbox"])
def test_a_defect_of_one_pixel_survives_the_downscale_at_its_place(geometry):
    """A 500x1263 frame with a 1-pixel bright defect brought to 64x160: the mask keeps it,
    where the image shows it."""
    img = np.full((500, 1263), 40, np.uint8)
    mask = np.zeros((500, 1263), bool)
    img[321, 900] = 255
    mask[321, 900] = True
    small, m = fit(img, (64, 160), geometry), fit_mask(mask, (64, 160), geometry)
    assert m.shape == (64, 160) and 1 <= m.sum() <= 4
    ys, xs = np.nonzero(m)
    brightest = np.unravel_index(np.argmax(small), small.shape)
    assert abs(brightest[0] - ys.mean()) <= 1.5 and abs(brightest[1] - xs.mean()) <= 1.5


def test_map_target_marks_a_cell_with_any_defect_pixel():
    m = torch.zeros(1, 1, 16, 24)
    m[0, 0, 9, 17] = 1
    t = map_target(m, (2, 3), 8)
    assert t.shape == (1, 1, 2, 3) and t.sum() == 1 and t[0, 0, 1, 2] == 1


def test_pixel_metrics_of_a_perfect_an_empty_and_a_half_map():
    masks = np.zeros((3, 1, 16, 16), bool)
    masks[0, 0, 2:6, 2:6] = True
    masks[0, 0, 10:12, 10:14] = True  # two regions in image 0, none in 1, one in 2
    masks[2, 0, 8:16, 0:8] = True
    known = np.ones(3, bool)
    perfect = np.where(masks, 20.0, -20.0).astype(np.float32)  # logit maps at full resolution
    m = pixel_metrics(perfect, masks, known)
    assert m["dice"] == pytest.approx(1.0) and m["iou"] == pytest.approx(1.0) and m["region_recall"] == 1.0
    assert m["regions"] == 3 and m["n_masks"] == 3
    empty = pixel_metrics(np.full_like(perfect, -5.0), masks, known)
    assert empty["dice"] == 0.0 and empty["region_recall"] == 0.0
    half = perfect.copy()
    half[0] = -20.0  # image 0's two regions missed
    h = pixel_metrics(half, masks, known)
    assert h["region_recall"] == pytest.approx(1 / 3) and 0 < h["dice"] < 1
    assert pixel_metrics(perfect, masks, np.zeros(3, bool)) == {"n_masks": 0}


def test_masks_follow_their_images_through_splits_letterbox_and_quarter_turns(tmp_path):
    """A folder dataset with images/<class> + masks/<class> (the magnetic-tile layout): portrait
    and landscape frames of several sizes, letterboxed into a wide input with orient landscape;
    each mask lands on its image's bright defect, the ok images' masks are known and empty."""
    from PIL import Image

    from qdeploy.recipe import load_recipe
    from quant.data.splits import load_splits

    rng = np.random.default_rng(0)
    for cls in ("Free", "Blowhole"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        (tmp_path / "masks" / cls).mkdir(parents=True)
        for i in range(12):
            h, w = (int(rng.integers(150, 400)), int(rng.integers(150, 400)))
            img = rng.integers(60, 90, (h, w)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            if cls == "Blowhole":
                y, x = int(rng.integers(10, h - 20)), int(rng.integers(10, w - 20))
                img[y:y + 8, x:x + 8], mask[y:y + 8, x:x + 8] = 250, 255
            Image.fromarray(img).save(tmp_path / "images" / cls / f"{i}.png")
            Image.fromarray(mask).save(tmp_path / "masks" / cls / f"{i}.png")
    recipe = load_recipe(None, {"dataset.kind": "folder", "dataset.path": str(tmp_path), "dataset.size": [64, 96],
                                "dataset.resize": "letterbox", "dataset.orient": "landscape",
                                "dataset.ok_classes": ["Free"], "dataset.split": [0.5, 0.25, 0.25]})
    s = load_splits(recipe.dataset, 0, tmp_path / "cache")
    for part in (s.train, s.val, s.test):
        masks, known = part.mask_array()
        assert known.all()
        for i in range(len(part)):
            px, m = part.pixels(i), masks[i, 0]
            if part.labels[i] == s.ok_index:
                assert not m.any()
            else:
                assert m.any() and m.ravel()[np.argmax(px)]  # the mask sits on the defect: its brightest pixel
                assert px[m].mean() > px[~m].mean() + 40 and m.sum() < 0.05 * m.size
