"""Grad-CAM overlays: the tapped model computes the model's own logits, the heatmap is the
classic CAM for a pool + linear head, samples are picked as documented, and (slow) a
trained default model points at the synthetic defects' masks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quant.models import create_model
from reference.cams import CamView, grad_cam, pick_samples, write_cam_overlays


@pytest.fixture(scope="module")
def pixels():
    gen = np.random.default_rng(0)
    return gen.integers(0, 256, size=(6, 1, 32, 32), dtype=np.uint8)


@pytest.mark.parametrize("quantized", [False, True])
def test_cam_view_returns_the_models_own_logits(quantized, pixels, one_torch_thread):
    torch.manual_seed(0)
    model = create_model("resnet8", 3, (32, 32), width=0.5, quantized=quantized)
    x = torch.as_tensor(pixels, dtype=torch.float32) / 255
    model.train()
    model(x)  # Brevitas initialises its activation scales in training mode
    model.eval()
    with torch.no_grad():
        assert torch.equal(torch.as_tensor(CamView(model)(x)), torch.as_tensor(model(x)))


def test_grad_cam_is_the_classic_cam_for_a_pool_and_linear_head(pixels, one_torch_thread):
    torch.manual_seed(1)
    model = create_model("resnet8", 3, (32, 32), width=0.5, quantized=False).eval()
    classes = np.array([0, 1, 2, 0, 1, 2])
    heat = grad_cam(model, pixels, classes, batch_size=4)  # two batches
    with torch.no_grad():
        feats = model.forward_features(torch.as_tensor(pixels, dtype=torch.float32) / 255)
        w = model.fc.weight[torch.as_tensor(classes)]  # [N, C]
        cam = F.relu(torch.einsum("nc,nchw->nhw", w, feats))[:, None]
        cam = F.interpolate(cam, size=(32, 32), mode="bilinear")[:, 0]
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    assert heat.shape == (6, 32, 32) and heat.max() <= 1.0 + 1e-6 and heat.min() >= 0
    np.testing.assert_allclose(heat, cam.numpy(), atol=1e-5)


def test_pick_samples_prefers_right_ones_and_shows_one_wrong():
    labels = np.array([1, 1, 0, 1, 1, 1, 1])
    logits = np.array([[0, 5], [5, 0], [5, 0], [0, 5], [0, 5], [0, 5], [4, 0]], dtype=np.float32)
    picked = pick_samples(labels, logits, 1, per_class=4)
    assert [s.index for s in picked] == [0, 1, 3, 4]  # three right ones, then the first wrong one
    assert [s.predicted for s in picked] == [1, 0, 1, 1]
    assert 0.99 < picked[0].confidence <= 1.0
    only_wrong = pick_samples(np.array([1, 1]), np.array([[5, 0], [3, 0]], np.float32), 1, per_class=4)
    assert [s.index for s in only_wrong] == [0, 1]
    assert pick_samples(labels, logits, 2) == []


def test_overlays_are_written_per_defect_class_and_stale_ones_removed(pixels, tmp_path, one_torch_thread):
    model = create_model("resnet8", 3, (32, 32), width=0.5, quantized=False).eval()
    labels = np.array([0, 1, 2, 0, 1, 2])
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "old_class.png").write_bytes(b"stale")
    logits = np.eye(3, dtype=np.float32)[labels] * 4
    entries = write_cam_overlays(model, "float", pixels, labels, logits, ("ok", "pit", "a/b"), 0, tmp_path / "cams")
    assert [e["class"] for e in entries] == ["pit", "a/b"]  # no map for the ok class
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["a_b.png", "pit.png"]
    assert all((tmp_path / e["file"]).read_bytes()[:4] == b"\x89PNG" for e in entries)
    assert [s["index"] for s in entries[0]["samples"]] == [1, 4]


@pytest.mark.slow
def test_trained_model_points_at_the_synthetic_defects(tmp_path, one_torch_thread):
    """Pointing game on the default job: the heatmap's peak falls inside the (3-pixel dilated)
    defect mask far more often than its area would give by chance."""
    from pathlib import Path

    from PIL import Image
    from scipy.ndimage import binary_dilation

    from qdeploy.stages.common import splits, test_pixels
    from qdeploy.cli import main
    from qdeploy.recipe import load_recipe
    from qdeploy.steps import Context
    from quant.checkpoint import load_checkpoint
    from quant.train import predict

    assert main(["train", "--build-dir", str(tmp_path)]) == 0
    ctx = Context(recipe=load_recipe(None), build_dir=tmp_path / "default")
    s = splits(ctx)
    model, _ = load_checkpoint(ctx.stage_dir("train") / "qat")
    right = np.flatnonzero((s.test.labels == 1) & (predict(model, s.test).argmax(1) == 1))
    heat = grad_cam(model, test_pixels(ctx)[right], np.ones(len(right), int))
    hits, areas = [], []
    for h, i in zip(heat, right):
        image = Path(s.test.paths[i])
        mask = np.array(Image.open(image.parent.parent / "masks" / image.parent.name / image.name)) > 0
        mask = binary_dilation(mask, iterations=3)
        hits.append(mask[np.unravel_index(h.argmax(), h.shape)])
        areas.append(mask.mean())
    assert len(right) > 50
    assert np.mean(hits) > 0.5 and np.mean(hits) > 5 * np.mean(areas)
