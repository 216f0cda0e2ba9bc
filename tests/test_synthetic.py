"""The embedded synthetic dataset: determinism, layout, labels, masks, sizes, caching, difficulty."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.errors import UserError
from qdeploy.recipe import DatasetConfig
from quant.data import synthetic as syn
from quant.data.synthetic import CLASSES, DEFECT_TYPES, assign_classes, ensure_generated, generate, render


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


# ----------------------------------------------------------------------------- determinism


def test_same_parameters_give_byte_identical_trees(tmp_path):
    a = _tree(generate(tmp_path / "a", 40, (32, 32), 0.25, seed=7))
    b = _tree(generate(tmp_path / "b", 40, (32, 32), 0.25, seed=7))
    assert a == b
    assert len([k for k in a if k.endswith(".png")]) == 80  # 40 images + 40 masks


def test_another_seed_gives_other_images(tmp_path):
    a = _tree(generate(tmp_path / "a", 40, (32, 32), 0.25, seed=7))
    b = _tree(generate(tmp_path / "b", 40, (32, 32), 0.25, seed=8))
    assert a["labels.csv"] != b["labels.csv"]
    img_a = [v for k, v in a.items() if k.endswith(".png") and not k.startswith("masks")]
    img_b = [v for k, v in b.items() if k.endswith(".png") and not k.startswith("masks")]
    assert not set(img_a) & set(img_b)  # not one image in common
    i0, _, _ = render(0, (32, 32), seed=7)
    j0, _, _ = render(0, (32, 32), seed=8)
    assert np.abs(i0.astype(int) - j0).mean() > 5


def test_an_image_does_not_depend_on_the_dataset_size(tmp_path):
    small = _tree(generate(tmp_path / "small", 30, (32, 32), 0.25, seed=3))
    large = _tree(generate(tmp_path / "large", 50, (32, 32), 0.25, seed=3))
    shared = [k for k in small if k.endswith(".png")]
    assert shared and all(small[k] == large[k] for k in shared)
    # and the files are what render() returns for that index
    rows = list(csv.DictReader((tmp_path / "small" / "labels.csv").open()))
    for row in rows[:10]:
        img, mask, kind = render(int(Path(row["file"]).stem), (32, 32), seed=3)
        assert kind == row["file"].split("/")[0]
        np.testing.assert_array_equal(_read(tmp_path / "small" / row["file"]), img)
        np.testing.assert_array_equal(_read(tmp_path / "small" / "masks" / row["file"]), mask)


# ----------------------------------------------------------------------------- layout and labels


def test_layout_labels_and_meta_agree(tmp_path):
    root = generate(tmp_path / "d", 120, (32, 32), 0.25, seed=1)
    assert sorted(p.name for p in root.iterdir()) == sorted([*CLASSES, "masks", "labels.csv", "meta.json"])
    rows = list(csv.DictReader((root / "labels.csv").open()))
    assert list(rows[0]) == ["file", "binary_label", "defect_type", "texture"]
    assert [r["file"].split("/")[1] for r in rows] == [f"{i:05d}.png" for i in range(120)]
    on_disk = sorted(str(p.relative_to(root)) for c in CLASSES for p in (root / c).iterdir())
    assert sorted(r["file"] for r in rows) == on_disk
    for r in rows:
        cls = r["file"].split("/")[0]
        assert r["binary_label"] == ("0" if cls == "ok" else "1")
        assert r["defect_type"] == ("none" if cls == "ok" else cls)
        assert r["texture"] in syn.TEXTURES
        assert (root / "masks" / r["file"]).is_file()
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 1 and meta["generator_version"] == syn.GENERATOR_VERSION
    assert meta["params"] == {"num_images": 120, "size": [32, 32], "defect_fraction": 0.25,
                              "difficulty": syn.DEFAULT_DIFFICULTY}
    assert meta["counts"] == {c: sum(r["file"].startswith(c + "/") for r in rows) for c in CLASSES}
    assert sum(meta["textures"].values()) == 120 and min(meta["textures"].values()) > 15


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_defect_fraction_and_type_balance(fraction):
    for n in (20, 137, 3000, 10_000):
        cls = assign_classes(np.arange(n), seed=5, defect_fraction=fraction)
        defective = int((cls > 0).sum())
        assert abs(defective - fraction * n) <= 3, (n, defective)  # low discrepancy, any prefix
    counts = np.bincount(cls, minlength=len(CLASSES))
    per_type = counts[1:] / counts[1:].sum()
    assert np.all(np.abs(per_type - 0.25) < 0.03), per_type
    # the split into classes moves with the seed
    assert not np.array_equal(cls, assign_classes(np.arange(n), seed=6, defect_fraction=fraction))


def test_the_smallest_dataset_still_has_its_share_of_defects(tmp_path):
    # DatasetConfig allows 20 images: independent coin flips would leave some seeds with
    # none or one defective image; the low-discrepancy assignment never does
    for seed in range(10):
        counts = np.bincount(assign_classes(np.arange(20), seed, 0.25), minlength=len(CLASSES))
        assert 4 <= 20 - counts[0] <= 6, (seed, counts)
    root = generate(tmp_path / "d", 20, (16, 16), 0.25, seed=0)
    counts = json.loads((root / "meta.json").read_text())["counts"]
    assert sum(counts.values()) == 20 and 14 <= counts["ok"] <= 16


# ----------------------------------------------------------------------------- masks and defects


def test_masks_are_nonempty_exactly_for_defective_images(tmp_path):
    root = generate(tmp_path / "d", 80, (32, 32), 0.3, seed=2)
    for r in csv.DictReader((root / "labels.csv").open()):
        mask = _read(root / "masks" / r["file"])
        img = _read(root / r["file"])
        assert mask.shape == img.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.any() == (r["binary_label"] == "1"), r["file"]


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_the_defect_changes_the_pixels_inside_its_mask(kind):
    # render(i, kind=...) and render(i, kind="ok") share surface, light and sensor noise,
    # so their difference is the defect alone
    inside, outside = [], []
    for i in range(40):
        ok, ok_mask, _ = render(i, (64, 64), seed=11, kind="ok")
        img, mask, got = render(i, (64, 64), seed=11, kind=kind)
        assert got == kind and not ok_mask.any() and mask.any()
        diff = np.abs(img.astype(np.int16) - ok.astype(np.int16))
        m = mask > 0
        assert diff[m].max() > 0, f"{kind} {i}: no pixel inside the mask changed"
        far = ~ndimage.binary_dilation(m, iterations=4)  # blur spreads a defect by ~1-2 px
        # outside the mask only faint tails (a scratch's tips below 10 % contrast) may remain
        assert not far.any() or diff[far].max() <= max(1, 0.12 * diff[m].max()), f"{kind} {i}: unmasked change"
        inside.append(diff[m].mean())
        outside.append(diff[~m].mean())
    assert np.median(inside) > 5 * max(np.median(outside), 0.1)


def test_masks_outline_small_and_large_defects():
    areas = {k: [] for k in DEFECT_TYPES}
    for k in DEFECT_TYPES:
        for i in range(60):
            areas[k].append(int((render(i, (64, 64), seed=4, kind=k)[1] > 0).sum()))
    assert min(areas["pit"]) <= 9  # a few pixels
    assert np.median(areas["pit"]) < np.median(areas["inclusion"])
    assert max(areas["scratch"]) > 40 and max(areas["crack"]) > 40  # long lines


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", [(8, 8), (32, 32), (128, 128), (64, 256), (256, 64)])
def test_every_size_and_class_renders(size, tmp_path):
    for kind in CLASSES:
        for i in range(8):
            img, mask, _ = render(i, size, seed=0, kind=kind)
            assert img.shape == mask.shape == size and img.dtype == mask.dtype == np.uint8
            assert mask.any() == (kind != "ok")
            assert img.std() > 1  # a textured surface, not a flat frame
    root = generate(tmp_path / "d", 10, size, 0.25, seed=0)
    for p in root.rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (size[1], size[0])  # PIL: (width, height)


# ----------------------------------------------------------------------------- cache


def test_ensure_generated_reuses_a_complete_dataset(tmp_path, monkeypatch):
    cfg = DatasetConfig(num_images=24, size=(16, 16))
    root = ensure_generated(cfg, seed=0, cache_dir=tmp_path)
    assert root.parent == tmp_path and root.name.startswith("synthetic-")
    assert (root / "meta.json").is_file()
    before = _tree(root)

    def no_regeneration(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(syn, "generate", no_regeneration)
    assert ensure_generated(cfg, seed=0, cache_dir=tmp_path) == root
    monkeypatch.undo()
    assert _tree(root) == before

    # every parameter that changes pixels or labels is part of the key
    others = [ensure_generated(DatasetConfig(num_images=25, size=(16, 16)), 0, tmp_path),
              ensure_generated(DatasetConfig(num_images=24, size=(16, 24)), 0, tmp_path),
              ensure_generated(DatasetConfig(num_images=24, size=(16, 16), defect_fraction=0.3), 0, tmp_path),
              ensure_generated(DatasetConfig(num_images=24, size=(16, 16), difficulty=0.7), 0, tmp_path),
              ensure_generated(cfg, seed=1, cache_dir=tmp_path)]
    assert len({root, *others}) == 6


def test_ensure_generated_rebuilds_an_incomplete_dataset(tmp_path):
    cfg = DatasetConfig(num_images=24, size=(16, 16))
    root = ensure_generated(cfg, seed=0, cache_dir=tmp_path)
    expected = _tree(root)
    (root / "meta.json").unlink()  # meta.json is written last: without it the tree is suspect
    (root / "ok" / "00000.png").write_bytes(b"garbage")
    assert ensure_generated(cfg, seed=0, cache_dir=tmp_path) == root
    assert _tree(root) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_an_interrupted_generate_leaves_no_tree(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = syn._render

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "d", 10, (16, 16), 0.25, seed=0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("kwargs, words", [
    (dict(size=(4, 64)), "at least 8x8"),
    (dict(defect_fraction=0.0), "defect_fraction"),
    (dict(defect_fraction=1.0), "defect_fraction"),
    (dict(num_images=0), "num_images"),
    (dict(difficulty=1.5), "difficulty"),
])
def test_bad_parameters_are_user_errors(tmp_path, kwargs, words):
    args = dict(root=tmp_path / "d", num_images=10, size=(16, 16), defect_fraction=0.25, seed=0) | kwargs
    with pytest.raises(UserError, match=words) as e:
        generate(**args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "d").exists()


def test_render_names_the_valid_classes():
    with pytest.raises(UserError, match="ok, scratch, pit, crack, inclusion"):
        render(0, (16, 16), kind="dent")


# ----------------------------------------------------------------------------- difficulty


def _highpass_features(img: np.ndarray) -> list[float]:
    x = img.astype(np.float64)
    feats = []
    for s in (1.0, 2.0):
        r = ndimage.gaussian_filter(x, s) - ndimage.gaussian_filter(x, 4 * s)
        med = np.median(r)
        r = np.abs(r - med) / (1.4826 * np.median(np.abs(r - med)) + 1e-6)
        top = np.sort(r.ravel())
        feats += [top[-1], top[-10:].mean(), top[-40:].mean(), (top > 4).mean() * 100]
    return feats


def _baseline(difficulty: float, n: int = 600, seed: int = 0) -> tuple[float, float]:
    """Logistic regression on robust high-pass statistics: test AUROC and accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.array([_highpass_features(render(i, (64, 64), seed, difficulty=difficulty)[0]) for i in range(n)])
    y = assign_classes(np.arange(n), seed, 0.25) > 0
    train = np.arange(n) % 2 == 0
    clf = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    score = clf.decision_function(x[~train])
    return roc_auc_score(y[~train], score), float(((score > 0) == y[~train]).mean())


def test_default_difficulty_is_learnable_but_not_trivial():
    # measured (800 images, seeds 0-2): AUROC 0.92-0.96, accuracy 0.93-0.95, defect recall
    # 0.78-0.81 (chance: AUROC 0.5, accuracy 0.75 by calling everything ok)
    auc, acc = _baseline(syn.DEFAULT_DIFFICULTY)
    assert auc > 0.8, auc
    assert acc < 0.98, acc  # some defects are at the noise floor: no 100 %
    # the knob works: at difficulty 1 most defects sit at the noise floor (measured 0.66-0.71)
    hard_auc, _ = _baseline(1.0)
    assert hard_auc < auc - 0.12, (hard_auc, auc)


@pytest.mark.slow
def test_small_cnn_lands_in_the_target_accuracy_band(tmp_path):
    """Calibration of DEFAULT_DIFFICULTY: float resnet8, 6 epochs, 3000 images at 64x64."""
    import torch

    from qdeploy.recipe import TrainConfig
    from quant import metrics
    from quant.data.splits import load_splits
    from quant.models import create_model
    from quant.train import fit, predict

    splits = load_splits(DatasetConfig(), seed=0, cache_dir=tmp_path)
    torch.manual_seed(0)
    model = create_model("resnet8", len(splits.class_names), (64, 64), quantized=False)
    train = TrainConfig(threads=1)
    fit(model, splits, train, epochs=6, lr=train.lr, seed=0, label="calibration")
    m = metrics.evaluate(predict(model, splits.test), splits.test.labels, splits.ok_index)
    # measured 0.93-0.94 (seeds 0, 1); the default recipe's 90-97 % band, with margin
    assert 0.85 <= m["accuracy"] <= 0.985, m["accuracy"]
