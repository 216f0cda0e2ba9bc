"""The segmentation-supervised defect model (research prototype: tools/train_segdec.py) and the
masked-image loader: shapes on non-square inputs, the quantized and float twins, the loader
on the shared magnetic-tile set (images with masks), stratified seeded splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.models.layers import Bits
from quant.models.segdec import DecisionOnly, create_segdec


@pytest.mark.parametrize("bits", [None, Bits(4, 4, 8)], ids=["float", "w4a4"])
def test_two_outputs_on_a_non_square_input(bits):
    torch.manual_seed(0)
    model = create_segdec(in_size=(64, 96), width=0.25, bits=bits).eval()
    x = torch.rand(3, 1, 64, 96)
    with torch.no_grad():
        logits, seg = model(x)
        alone = DecisionOnly(model)(x)
    assert logits.shape == (3, 2) and seg.shape == (3, 1, 8, 12)  # the map at 1/8 resolution
    assert torch.equal(alone, logits)  # the export wrapper computes the same decision


def test_magnetic_tile_loads_with_masks_and_a_stratified_split(datasets_dir, tmp_path):
    from quant.data.masks_loader import load_masked_dataset, stratified_split

    data = load_masked_dataset(datasets_dir / "magnetic_tile", (64, 96), cache_dir=tmp_path)
    n = len(data.labels)
    assert n == 1344 and data.images.shape == (n, 1, 64, 96) and data.images.dtype == np.uint8
    assert data.masks.shape == data.images.shape and data.masks.dtype == bool
    ok = data.class_names[data.ok_index]
    assert ok == "Free" and int(data.defect.sum()) == 392
    # masks mark defects only: none on a defect-free tile, some on (almost) every defective one
    assert not data.masks[~data.defect].any() and data.masks[data.defect].any(axis=(1, 2, 3)).mean() > 0.95
    tr, va, te = stratified_split(data.labels, seed=0)
    assert len(set(tr) | set(va) | set(te)) == n and not (set(tr) & set(te))
    assert abs(data.defect[te].mean() - data.defect.mean()) < 0.03  # every split holds its share of defects
    again = load_masked_dataset(datasets_dir / "magnetic_tile", (64, 96), cache_dir=tmp_path)  # from the cache
    assert np.array_equal(again.images, data.images) and np.array_equal(again.masks, data.masks)
