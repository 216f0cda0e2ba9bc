"""Real-dataset loading: every on-disk layout, splits, tiling, dedup and bad inputs.

Each test writes a small dataset in that layout into tmp_path (random-noise images, so
no two files are alike unless a test plants a duplicate) and loads it with load_splits.
"""
from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from qdeploy.recipe import DatasetConfig
from quant.data import images
from quant.data.imageset import ImageSet
from quant.data.rle import rle_encode
from quant.data.splits import load_splits

RNG_SEED = 1234


def _noise(rng, h, w, lo=40, hi=200):
    return rng.integers(lo, hi, (h, w), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_folder(root: Path, counts: dict[str, int], shape=(20, 24), ext=".png", seed=RNG_SEED) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _save(root / cls / f"{cls}_{i:03d}{ext}", _noise(rng, *shape))
    return root


def cfg(kind, path, **kw) -> DatasetConfig:
    return DatasetConfig(kind=kind, path=str(path), size=kw.pop("size", (16, 16)), **kw)


def keys(s) -> set[str]:
    return set(s.keys)


def per_class(s, n_classes) -> list[int]:
    return np.bincount(s.labels, minlength=n_classes).tolist()


# ----------------------------------------------------------------------------- folder


def test_folder_binary_labels_splits_stratified_disjoint(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 60, "scratch": 20, "pit": 20})
    sp = load_splits(cfg("folder", root), seed=3, cache_dir=tmp_path / "cache")
    assert sp.class_names == ("ok", "defect") and sp.ok_index == 0
    all_keys = sp.train.keys + sp.val.keys + sp.test.keys
    assert len(all_keys) == len(set(all_keys)) == 100  # disjoint and complete
    for s in (sp.train, sp.val, sp.test):
        for k, label in zip(s.keys, s.labels):
            assert label == (0 if k.startswith("ok/") else 1), k
    # stratified: each split holds each class in the split's proportion (within rounding)
    for s, frac in ((sp.train, 0.7), (sp.val, 0.15), (sp.test, 0.15)):
        ok, defect = per_class(s, 2)
        assert abs(ok - 60 * frac) <= 1.5 and abs(defect - 40 * frac) <= 1.5, (ok, defect)


def test_folder_splits_are_deterministic_by_seed(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 40, "bad": 20})
    a = load_splits(cfg("folder", root, ok_classes=("ok",)), seed=5, cache_dir=tmp_path)
    b = load_splits(cfg("folder", root, ok_classes=("ok",)), seed=5, cache_dir=tmp_path)
    c = load_splits(cfg("folder", root, ok_classes=("ok",)), seed=6, cache_dir=tmp_path)
    assert a.train.keys == b.train.keys and a.val.keys == b.val.keys and a.test.keys == b.test.keys
    assert keys(a.test) != keys(c.test)


def test_folder_type_task_keeps_one_class_per_folder(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 30, "crack": 15, "pit": 15})
    sp = load_splits(cfg("folder", root, task="type"), seed=0, cache_dir=tmp_path)
    assert sp.class_names == ("crack", "ok", "pit") and sp.ok_index == 1
    for s in (sp.train, sp.val, sp.test):
        for k, label in zip(s.keys, s.labels):
            assert sp.class_names[label] == k.split("/")[0]


def test_folder_type_task_without_ok_class(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 12, "b": 12, "c": 12})
    sp = load_splits(cfg("folder", root, task="type"), seed=0, cache_dir=tmp_path)
    assert sp.ok_index is None and sp.class_names == ("a", "b", "c")
    with pytest.raises(UserError, match="no ok class"):
        load_splits(cfg("folder", root, task="binary"), seed=0, cache_dir=tmp_path)


def test_imageset_decodes_lazily_resizes_and_caches(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 12, "bad": 12}, shape=(30, 50))
    sp = load_splits(cfg("folder", root, ok_classes=("ok",), size=(16, 24)), seed=0, cache_dir=tmp_path)
    s = sp.train
    x, y = s[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 16, 24) and isinstance(y, int)
    expected = np.asarray(Image.open(root / s.keys[0]).convert("L").resize((24, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0].numpy(), expected)
    assert s.labels.dtype == np.int64 and s.pixels(0).shape == (16, 24)
    # cached (the set is tiny): the pixels survive the file's removal...
    (root / s.keys[0]).unlink()
    np.testing.assert_array_equal(s.pixels(0), expected)
    # ...while a streaming copy (no cache budget) has to read the disk again
    streaming = ImageSet(s.paths, s.labels, s.keys, s.size, cache_bytes=0)
    assert not streaming.cached
    with pytest.raises(UserError, match="not found"):
        streaming.pixels(0)


def test_imageset_pickles_and_works_with_dataloader_workers(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 12, "bad": 12})
    s = load_splits(cfg("folder", root, ok_classes=("ok",)), seed=0, cache_dir=tmp_path).train
    direct = s.array()
    clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(clone.array(), direct)
    loader = torch.utils.data.DataLoader(s, batch_size=5, num_workers=1, shuffle=False)
    batches = list(loader)
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), direct)
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), s.labels)


def test_letterbox_keeps_aspect_and_pads_with_edge_mean(tmp_path):
    img = np.full((20, 40), 50, np.uint8)
    img[2:-2, 2:-2] = 200
    out = images.fit(img, (16, 16), "letterbox")
    # 20x40 -> 8x16, centred: rows 4..11 hold the image, 4 padding rows above and below
    assert (out[:4] == 50).all() and (out[12:] == 50).all()
    assert out[8, 8] == 200
    resized = images.fit(img, (16, 16), "resize")
    assert resized[:4].max() > 100  # plain resize squashes: the bright interior fills the full height


# ----------------------------------------------------------------------------- tiling


def test_tile_boxes_for_strips():
    boxes = images.tile_boxes(256, 1600, (64, 64))
    assert [b[1] for b in boxes] == [0, 224, 448, 672, 896, 1120, 1344]
    assert all(b[3] - b[1] == 256 and (b[0], b[2]) == (0, 256) for b in boxes)
    assert images.tile_boxes(1600, 256, (64, 64))[-1] == (1344, 0, 1600, 256)  # vertical strip
    assert images.tile_boxes(256, 1600, (64, 128)) == [(0, s, 256, s + 512) for s in (0, 363, 725, 1088)]
    assert images.tile_boxes(100, 104, (32, 32)) == [(0, 0, 100, 104)]  # within the slack: one tile


def test_tiling_a_256x1600_strip_labels_tiles_from_masks(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "strips"
    for i in range(6):
        _save(root / "ok" / f"ok_{i}.png", _noise(rng, 256, 1600))
        strip = _noise(rng, 256, 1600)
        mask = np.zeros((256, 1600), np.uint8)
        mask[100:120, 1400:1420] = 255  # only inside the last tile (columns 1344..1599)
        _save(root / "defect" / f"d_{i}.png", strip)
        _save(root / "masks" / "defect" / f"d_{i}.png", mask)
    sp = load_splits(cfg("folder", root, size=(64, 64), resize="tile", split=(0.5, 0.25, 0.25)), seed=0,
                     cache_dir=tmp_path)
    everything = {k: (s, i) for s in (sp.train, sp.val, sp.test) for i, k in enumerate(s.keys)}
    assert len(everything) == 12 * 7
    for k, (s, i) in everything.items():
        image, tile = k.split("#t")
        expect_defect = image.startswith("defect/") and tile == "6"
        assert s.labels[i] == int(expect_defect), k
    # the tiles of one image never straddle splits
    for s in (sp.train, sp.val, sp.test):
        images_here = {k.split("#")[0] for k in s.keys}
        assert all(sum(k.startswith(img + "#") for k in s.keys) == 7 for img in images_here)
    # a tile's pixels are its crop, resized
    s, i = everything["defect/d_0.png#t6"]
    src = np.asarray(Image.open(root / "defect" / "d_0.png"))
    np.testing.assert_array_equal(s.pixels(i), images.resize(np.ascontiguousarray(src[:, 1344:1600]), (64, 64)))


# ----------------------------------------------------------------------------- kolektor


def make_kolektor(root: Path, n_train=(20, 8), n_test=(10, 4)) -> Path:
    rng = np.random.default_rng(1)
    for split, (n_ok, n_def) in (("train", n_train), ("test", n_test)):
        for i in range(n_ok + n_def):
            _save(root / split / f"{split}{i:04d}.png", _noise(rng, 40, 16))
            gt = np.zeros((40, 16), np.uint8)
            if i >= n_ok:
                gt[10:14, 3:9] = 255
            _save(root / split / f"{split}{i:04d}_GT.png", gt)
    return root


def test_kolektor_labels_from_masks_and_official_split(tmp_path):
    root = make_kolektor(tmp_path / "ksdd2")
    sp = load_splits(cfg("kolektor", root, use_official_test=True), seed=0, cache_dir=tmp_path)
    assert sp.class_names == ("ok", "defect")
    assert all(k.startswith("test/") for k in sp.test.keys) and len(sp.test) == 14
    assert all(k.startswith("train/") for k in sp.train.keys + sp.val.keys)
    assert len(sp.train) + len(sp.val) == 28
    assert per_class(sp.test, 2) == [10, 4]
    assert not any("_GT" in k for s in (sp.train, sp.val, sp.test) for k in s.keys)


def test_kolektor_missing_mask_is_a_user_error(tmp_path):
    root = make_kolektor(tmp_path / "ksdd2")
    (root / "train" / "train0003_GT.png").unlink()
    with pytest.raises(UserError, match="train0003.png has no ground-truth mask"):
        load_splits(cfg("kolektor", root), seed=0, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- severstal


def make_severstal(root: Path, shape=(32, 200), n_images=30) -> tuple[Path, dict[str, str]]:
    """Images 0..9 ok; 10..19 one class-1 defect; 20..29 class 1 small + class 3 large."""
    rng = np.random.default_rng(2)
    h, w = shape
    rows, expected = [], {}
    for i in range(n_images):
        name = f"{i:04x}a1b2.jpg"
        _save(root / "train_images" / name, _noise(rng, h, w), quality=95)
        expected[name] = "ok"
        if i >= 10:
            m1 = np.zeros(shape, bool)
            m1[4:8, 10:14] = True  # 16 px
            rows.append((name, 1, rle_encode(m1)))
            expected[name] = "defect_1"
        if i >= 20:
            m3 = np.zeros(shape, bool)
            m3[10:20, 50:60] = True  # 100 px: the type label is class 3
            rows.append((name, 3, rle_encode(m3)))
            expected[name] = "defect_3"
    with open(root / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["ImageId", "ClassId", "EncodedPixels"])
        wr.writerows(rows)
    return root, expected


def test_severstal_binary_and_type_labels_from_rle(tmp_path):
    root, expected = make_severstal(tmp_path / "sev")
    sp = load_splits(cfg("severstal", root, task="type"), seed=0, cache_dir=tmp_path)
    assert sp.class_names == ("defect_1", "defect_3", "ok") and sp.ok_index == 2
    for s in (sp.train, sp.val, sp.test):
        for k, label in zip(s.keys, s.labels):
            assert sp.class_names[label] == expected[k.split("/")[-1]], k
    binary = load_splits(cfg("severstal", root), seed=0, cache_dir=tmp_path)
    total = sum((np.array(per_class(s, 2)) for s in (binary.train, binary.val, binary.test)), np.zeros(2, int))
    assert total.tolist() == [10, 20]


def test_severstal_tiles_256x1600_labelled_by_class_pixels(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "sev"
    rows = []
    for i in range(8):
        name = f"img{i}.jpg"
        _save(root / "train_images" / name, _noise(rng, 256, 1600), quality=90)
        if i % 2:
            m = np.zeros((256, 1600), bool)
            m[0:40, 0:100] = True  # tile 0 only (tile 1 starts at column 224)
            rows.append((name, 2, rle_encode(m)))
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "ClassId", "EncodedPixels"), *rows])
    sp = load_splits(cfg("severstal", root, task="type", resize="tile", size=(64, 64), split=(0.5, 0.25, 0.25)),
                     seed=0, cache_dir=tmp_path)
    labels = {k: s.class_names[l] for s in (sp.train, sp.val, sp.test) for k, l in zip(s.keys, s.labels)}
    assert len(labels) == 8 * 7
    for k, name in labels.items():
        i, tile = int(k.split("img")[1][0]), k.split("#t")[1]
        assert name == ("defect_2" if i % 2 and tile == "0" else "ok"), k


def test_severstal_row_for_missing_image_is_a_user_error(tmp_path):
    root, _ = make_severstal(tmp_path / "sev")
    (root / "train_images" / "0014a1b2.jpg").unlink()
    with pytest.raises(UserError, match="names 0014a1b2.jpg, which is not in"):
        load_splits(cfg("severstal", root), seed=0, cache_dir=tmp_path)


def test_severstal_malformed_rle_is_a_user_error_naming_the_line(tmp_path):
    root, _ = make_severstal(tmp_path / "sev")
    lines = (root / "train.csv").read_text().splitlines()
    name = lines[3].split(",")[0]
    lines[3] = f"{name},1,5 3 6 2"  # overlapping runs
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train.csv line 4 .*overlap"):
        load_splits(cfg("severstal", root), seed=0, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- mvtec


def make_mvtec(root: Path) -> Path:
    rng = np.random.default_rng(4)
    for i in range(20):
        _save(root / "train" / "good" / f"{i:03d}.png", _noise(rng, 24, 24))
    for i in range(6):
        _save(root / "test" / "good" / f"{i:03d}.png", _noise(rng, 24, 24))
    for t in ("crack", "hole"):
        for i in range(8):
            _save(root / "test" / t / f"{i:03d}.png", _noise(rng, 24, 24))
            m = np.zeros((24, 24), np.uint8)
            m[5:9, 5:9] = 255
            _save(root / "ground_truth" / t / f"{i:03d}_mask.png", m)
    return root


def test_mvtec_pools_official_split_and_maps_good_to_ok(tmp_path):
    root = make_mvtec(tmp_path / "bottle")
    sp = load_splits(cfg("mvtec", root), seed=0, cache_dir=tmp_path)
    total = sum((np.array(per_class(s, 2)) for s in (sp.train, sp.val, sp.test)), np.zeros(2, int))
    assert total.tolist() == [26, 16]
    assert all(per_class(s, 2)[1] > 0 for s in (sp.train, sp.val, sp.test))  # defects everywhere
    typed = load_splits(cfg("mvtec", root, task="type"), seed=0, cache_dir=tmp_path)
    assert typed.class_names == ("crack", "good", "hole") and typed.ok_index == 1
    with pytest.raises(UserError, match="only good images"):
        load_splits(cfg("mvtec", root, use_official_test=True), seed=0, cache_dir=tmp_path)
    with pytest.raises(UserError, match="several MVTec categories"):
        load_splits(cfg("mvtec", tmp_path), seed=0, cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- casting + dedup


def make_casting(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for split, n in (("train", 24), ("test", 8)):
        for cls in ("def_front", "ok_front"):
            for i in range(n):
                # smooth random images: a near-duplicate must still correlate after JPEG
                small = rng.integers(0, 255, (6, 6), dtype=np.uint8)
                img = np.asarray(Image.fromarray(small).resize((60, 60), Image.Resampling.BICUBIC))
                _save(root / split / cls / f"cast_{cls[:3]}_{split}_{i}.jpeg", img, quality=95)
    return root


def test_casting_official_split_drops_exact_and_near_duplicates(tmp_path):
    root = make_casting(tmp_path / "casting")
    exact = root / "test" / "ok_front" / "cast_ok__test_0.jpeg"
    shutil.copyfile(root / "train" / "ok_front" / "cast_ok__train_3.jpeg", exact)
    near = root / "test" / "def_front" / "cast_def_test_1.jpeg"
    original = np.asarray(Image.open(root / "train" / "def_front" / "cast_def_train_5.jpeg"))
    _save(near, np.clip(original.astype(int) + 3, 0, 255).astype(np.uint8), quality=80)  # re-lit, re-encoded

    sp = load_splits(cfg("casting", root, use_official_test=True), seed=0, cache_dir=tmp_path / "cache")
    assert sp.class_names == ("ok", "defect")
    found = {(d.key, d.kind, d.match, d.dropped) for d in sp.duplicates}
    assert found == {
        ("test/ok_front/cast_ok__test_0.jpeg", "exact", "train/ok_front/cast_ok__train_3.jpeg", True),
        ("test/def_front/cast_def_test_1.jpeg", "near", "train/def_front/cast_def_train_5.jpeg", True),
    }
    assert len(sp.test) == 16 - 2 and all(k.startswith("test/") for k in sp.test.keys)
    assert "test/ok_front/cast_ok__test_0.jpeg" not in sp.test.keys
    assert any("cast_ok__test_0.jpeg" in n and "byte-identical" in n for n in sp.notes)
    assert (tmp_path / "cache" / "thumbs48.npz").is_file()

    kept = load_splits(cfg("casting", root, use_official_test=True, dedup=False), seed=0, cache_dir=tmp_path / "cache")
    assert len(kept.test) == 16 and {d.kind for d in kept.duplicates} == {"exact", "near"}
    assert not any(d.dropped for d in kept.duplicates)


def test_random_split_keeps_byte_identical_files_together(tmp_path):
    root = make_folder(tmp_path / "d", {"ok": 30, "bad": 30})
    shutil.copyfile(root / "bad" / "bad_007.png", root / "bad" / "bad_copy.png")
    for seed in range(6):
        sp = load_splits(cfg("folder", root, ok_classes=("ok",)), seed=seed, cache_dir=tmp_path)
        where = [name for name, s in sp.items() if "bad/bad_007.png" in s.keys or "bad/bad_copy.png" in s.keys]
        assert len(where) == 1
        assert any("bad/bad_007.png = bad/bad_copy.png" in n for n in sp.notes)
        assert sp.duplicates == []
    # without dedup a seed splits them apart, and the copy in the later split is reported, not dropped
    for seed in range(40):
        sp = load_splits(cfg("folder", root, ok_classes=("ok",), dedup=False), seed=seed, cache_dir=tmp_path)
        if sp.duplicates:
            (d,) = sp.duplicates
            assert {d.key, d.match} == {"bad/bad_007.png", "bad/bad_copy.png"} and not d.dropped
            assert d.key in sp.val.keys + sp.test.keys
            return
    pytest.fail("no seed in 0..39 split the two copies apart")


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_kind_generates_then_loads_as_folder(tmp_path):
    c = DatasetConfig(kind="synthetic", num_images=60, size=(32, 32))
    sp = load_splits(c, seed=0, cache_dir=tmp_path)
    assert sp.class_names == ("ok", "defect")
    n = len(sp.train) + len(sp.val) + len(sp.test)
    assert n == 60 and per_class(sp.train, 2)[1] > 0
    x, _ = sp.test[0]
    assert tuple(x.shape) == (1, 32, 32)


# ----------------------------------------------------------------------------- decoding


def test_decodes_every_pixel_mode_to_uint8_gray(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    luma = round(255 * 0.299 + 128 * 0.587)  # ITU-R 601
    assert abs(int(images.read_gray(_save(tmp_path / "rgb.png", rgb))[0, 0]) - luma) <= 1
    rgba = np.dstack([rgb, np.zeros((4, 4), np.uint8)])  # fully transparent: alpha ignored
    assert abs(int(images.read_gray(_save(tmp_path / "rgba.png", rgba))[0, 0]) - luma) <= 1
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    np.testing.assert_array_equal(images.read_gray(_save(tmp_path / "g.bmp", gray)), gray)
    Image.fromarray(gray).convert("P").save(tmp_path / "p.gif")
    np.testing.assert_array_equal(images.read_gray(tmp_path / "p.gif"), gray)
    g16 = np.array([[0, 257, 32768, 65535]], np.uint16)
    _save(tmp_path / "g16.png", g16)
    np.testing.assert_array_equal(images.read_gray(tmp_path / "g16.png"), [[0, 1, 128, 255]])
    Image.new("CMYK", (3, 2), (0, 0, 0, 255)).save(tmp_path / "black.tif")
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "white.jpg")
    assert (images.read_gray(tmp_path / "black.tif") == 0).all()
    assert (images.read_gray(tmp_path / "white.jpg") >= 254).all()
    bilevel = Image.fromarray(gray > 100).convert("1")
    bilevel.save(tmp_path / "b.png")
    np.testing.assert_array_equal(images.read_gray(tmp_path / "b.png"), np.where(gray > 100, 255, 0))


def _animated_gif(path: Path):
    frames = [Image.new("L", (8, 8), v) for v in (0, 255)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize(
    "make,why",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not an image at all"), "not an image"),
        (lambda p: _animated_gif(p), "frames"),
    ],
    ids=["zero-byte", "garbage", "animated"],
)
def test_bad_files_stop_loading_with_a_user_error_naming_them(tmp_path, make, why):
    root = make_folder(tmp_path / "d", {"ok": 10, "bad": 10})
    victim = root / "bad" / "bad_004.png"
    victim.unlink()
    make(victim)
    with pytest.raises(UserError, match=why) as e:
        load_splits(cfg("folder", root, ok_classes=("ok",)), seed=0, cache_dir=tmp_path)
    assert str(victim) in str(e.value) and "\n" not in str(e.value)


def test_truncated_png_is_a_user_error_on_decode(tmp_path):
    path = _save(tmp_path / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        images.read_gray(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "layout,why",
    [
        ({"ok": 10, "bad": 0}, "has no images"),
        ({"ok": 10}, "only one class"),
        ({}, "no images in"),
    ],
    ids=["empty-class-folder", "single-class", "no-images"],
)
def test_bad_folder_layouts_are_user_errors(tmp_path, layout, why):
    root = tmp_path / "d"
    root.mkdir()
    make_folder(root, layout)
    with pytest.raises(UserError, match=why):
        load_splits(cfg("folder", root), seed=0, cache_dir=tmp_path)


def test_missing_dataset_and_unusable_official_test_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        load_splits(cfg("folder", tmp_path / "nope"), seed=0, cache_dir=tmp_path)
    root = make_folder(tmp_path / "d", {"ok": 10, "bad": 10})
    with pytest.raises(UserError, match="use_official_test"):
        load_splits(cfg("folder", root, ok_classes=("ok",), use_official_test=True), seed=0, cache_dir=tmp_path)
    tiny = make_folder(tmp_path / "tiny", {"ok": 10, "bad": 1})
    with pytest.raises(UserError, match="class defect has 1"):
        load_splits(cfg("folder", tiny, ok_classes=("ok",)), seed=0, cache_dir=tmp_path)
