"""Bad datasets through the real CLI: refused before the first epoch, in one line naming the file.

Every case runs `qdeploy train` on a small dataset built in tmp_path; the data check (every
file opened once, quant/data/validate.py) must refuse it before any training, so no
checkpoint and no stage.json appear, and the message is one line even when a file name
holds a newline.
"""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus import RECIPE, TINY, assert_user_error, debris, folder_dataset, noise_png, run, severstal


def _jpeg(shape=(32, 32), seed=1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _base(tmp: Path, **counts) -> Path:
    return folder_dataset(tmp / "data", counts or {"ok": 12, "defect": 12})


def case_clash(tmp):
    root = _base(tmp)
    folder_dataset(root, {"OK": 6}, seed=1)
    return root, ()


def symlink_loop_file(tmp):
    root = _base(tmp)
    os.symlink("loop.png", root / "defect" / "loop.png")
    return root, ()


def symlink_loop_class(tmp):
    root = _base(tmp)
    os.symlink("scratch", root / "scratch")
    return root, ()


def symlink_loop_root(tmp):
    os.symlink("data", tmp / "data")
    return tmp / "data", ()


def _masks(root: Path, bad_shape, classes=("defect",)) -> None:
    for cls in classes:
        for p in sorted((root / cls).glob("*.png")):
            noise_png(root / "masks" / cls / p.name, np.random.default_rng(0), (32, 32))
    noise_png(root / "masks" / "defect" / "defect_005.png", np.random.default_rng(0), bad_shape)


def mask_size(mode):
    def make(tmp):
        root = _base(tmp)
        _masks(root, (16, 24))
        return root, ("--set", f"dataset.resize={mode}")
    return make


def truncated_jpeg(tmp):
    root = _base(tmp)
    data = _jpeg()
    (root / "defect" / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # header intact: only decoding fails
    return root, ("--set", "train.sampler=weighted")


def several_broken(tmp):
    root = _base(tmp)
    for name in ("a_empty.png", "b_empty.png", "c_empty.png"):
        (root / "ok" / name).write_bytes(b"")
    return root, ()


def newline_in_name(tmp):
    root = _base(tmp)
    (root / "defect" / "bad\nname.png").write_bytes(b"")
    return root, ()


def newline_in_class(tmp):
    root = _base(tmp)
    (root / "de\nfect").mkdir()
    return root, ()


def empty_mask(tmp):
    root = _base(tmp)
    _masks(root, (32, 32))
    (root / "masks" / "defect" / "defect_003.png").write_bytes(b"")
    return root, ()


def dataset_is_a_file(tmp):
    (tmp / "data.zip").write_bytes(b"PK\x03\x04")
    return tmp / "data.zip", ()


def _sev(rows, encoding="utf-8"):
    def make(tmp):
        return severstal(tmp / "sev", rows, encoding), ("--set", "dataset.kind=severstal")
    return make


def kolektor_mask(tmp):
    root = tmp / "kol"
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for i in range(8):
            noise_png(root / split / f"{i:03d}.png", rng, (32, 32))
            mask = np.zeros((32, 32) if i != 5 else (30, 32), np.uint8)
            mask[:4, :4] = 255 if i % 2 else 0
            Image.fromarray(mask).save(root / split / f"{i:03d}_GT.png")
    return root, ("--set", "dataset.kind=kolektor")


# id -> (dataset maker, phrases)
CASES = {
    "class-folders-differ-in-case": (case_clash, ("'OK' and 'ok'", "differ only in case")),
    "symlink-loop-file": (symlink_loop_file, ("loop.png", "symlink loop")),
    "symlink-loop-class-folder": (symlink_loop_class, ("scratch", "symlink loop")),
    "symlink-loop-dataset-root": (symlink_loop_root, ("data", "symlink loop")),
    "mask-wrong-size-resize": (mask_size("resize"), ("mask", "defect_005.png", "24x16", "must match")),
    "mask-wrong-size-letterbox": (mask_size("letterbox"), ("mask", "defect_005.png", "must match")),
    "mask-wrong-size-tile": (mask_size("tile"), ("mask", "defect_005.png", "must match")),
    "truncated-jpeg-weighted-sampler": (truncated_jpeg, ("cut.jpg", "truncated")),
    "several-broken-files-summarised": (several_broken, ("a_empty.png", "is empty", "3 of 27 files refused", "b_empty.png")),
    "newline-in-file-name": (newline_in_name, ("bad\\nname.png", "is empty")),
    "newline-in-class-folder": (newline_in_class, ("de\\nfect", "has no images")),
    "empty-mask-file": (empty_mask, ("defect_003.png", "is empty")),
    "dataset-path-is-a-file": (dataset_is_a_file, ("data.zip", "is not a directory")),
    "rle-fullwidth-digits": (_sev([("img00.jpg", 1, "１ 10")]), ("line 2", "img00.jpg", "not an integer")),
    "rle-huge-digits": (_sev([("img00.jpg", 1, "1 " + "9" * 5000)]), ("line 2", "number of 5000 digits")),
    "rle-arabic-digits": (_sev([("img00.jpg", 1, "١ 2")]), ("line 2", "not an integer")),
    "rle-beyond-image": (_sev([("img00.jpg", 1, "999999999 2")]), ("line 2", "beyond the image")),
    "csv-latin1": (_sev([("img00.jpg", 1, "1 10"), ("imgé.jpg", 2, "1 3")], "latin-1"), ("train.csv", "not UTF-8")),
    "csv-classid-not-ascii": (_sev([("img00.jpg", "٣", "1 10")]), ("line 2", "ClassId")),
    "kolektor-mask-wrong-size": (kolektor_mask, ("005_GT.png", "must match")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_refused_before_training(case, tmp_path, capsys):
    make, phrases = CASES[case]
    root, extra = make(tmp_path)
    build = tmp_path / "build"
    argv = ["train", *TINY, "--set", "dataset.kind=folder", "--set", f"dataset.path={root}", *extra]
    code, err = run(capsys, *argv, "--build-dir", str(build))
    print(assert_user_error(code, err, phrases))
    assert "step_train_qat" not in err and not (build / RECIPE / "train" / "float.pt").exists()
    assert not (build / RECIPE / "train" / "stage.json").exists()
    if build.exists():
        assert not debris(build), debris(build)


# ---------------------------------------------------------------------------- blame the input


def test_unreadable_dataset_folder_blames_the_input(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the refusal the kernel gives a user is simulated."""
    root = _base(tmp_path)
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root / "defect":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, err = run(capsys, "train", *TINY, "--set", "dataset.kind=folder", "--set", f"dataset.path={root}",
                    "--build-dir", str(tmp_path / "build"))
    line = assert_user_error(code, err, ("cannot read the dataset folder", "defect", "permission denied", "input"))
    assert "--build-dir" not in line


def test_an_os_error_on_an_input_is_not_blamed_on_the_build_dir(tmp_path, capsys, monkeypatch):
    import quant.data.splits

    root = _base(tmp_path)

    def refuse(kind, path, ok, boxes=None):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path / "ok"))

    monkeypatch.setattr(quant.data.splits, "list_dataset", refuse)
    code, err = run(capsys, "train", *TINY, "--set", "dataset.kind=folder", "--set", f"dataset.path={root}",
                    "--build-dir", str(tmp_path / "build"))
    line = assert_user_error(code, err, ("permission denied", str(root / "ok"), "an input of this run"))
    assert "choose another --build-dir" not in line


# ---------------------------------------------------------------------------- what must read correctly


def test_a_csv_with_a_utf8_bom_reads_its_columns(tmp_path):
    from quant.data.loaders import list_dataset

    root = severstal(tmp_path / "sev", [("img00.jpg", 1, "1 10"), ("img01.jpg", 3, "5 5 20 2")], "utf-8-sig")
    assert (root / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    listing = list_dataset("severstal", root)
    by_name = {Path(r.path).name: r.cls for r in listing.records}
    assert by_name["img00.jpg"] == "defect_1" and by_name["img01.jpg"] == "defect_3" and by_name["img02.jpg"] == "ok"


def test_check_validates_every_file_and_prints_markup_in_names_as_text(tmp_path, capsys):
    root = folder_dataset(tmp_path / "[" / "yellow]" / "data", {"ok": 12, "defect": 12})  # "[/yellow]" in the path
    (root / "ok" / "notes.txt").write_text("not an image")  # a note quotes the folder
    code, err = run(capsys, "check", "--set", "dataset.kind=folder", "--set", f"dataset.path={root}",
                    "--set", "dataset.size=[32, 32]", "--build-dir", str(tmp_path / "build"))
    out = err + capsys.readouterr().out
    assert code == 0, err
    assert "24 images" in out and "none refused" in out
    assert not (tmp_path / "build").exists()


def test_the_data_check_decodes_every_file_once(tmp_path, monkeypatch):
    """Streaming: each image file is opened exactly once by the check, whatever the sampler."""
    from quant.data.loaders import list_dataset
    from quant.data.validate import scan

    root = _base(tmp_path)
    opened: list[str] = []
    real_open = open

    def counting_open(file, mode="r", *a, **kw):
        if "b" in mode and str(file).endswith(".png"):
            opened.append(str(file))
        return real_open(file, mode, *a, **kw)

    import builtins

    monkeypatch.setattr(builtins, "open", counting_open)
    result = scan(list_dataset("folder", root).records, workers=1)
    monkeypatch.undo()
    assert len(result.sizes) == 24 and sorted(opened) == sorted(set(opened)) and len(opened) == 24
    assert set(result.sizes.values()) == {(32, 32)}


def test_the_data_corpus_is_large_enough():
    assert len(CASES) >= 18
