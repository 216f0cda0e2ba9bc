"""Shared helpers of the bad-input corpus (tests/test_bad_*.py): run the real CLI in-process,
check the one-line error, find what an atomic write left behind, make small datasets."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from qdeploy.cli import main

TINY = ["--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=200", "--set", "model.width=0.25",
        "--set", "train.float_epochs=1", "--set", "train.qat_epochs=1"]
RECIPE = "default"  # build/<recipe>/<stage>


def run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def debris(root: Path) -> list[Path]:
    """Atomic writes leave hidden temp files/dirs (`.<name>.<random>[.tmp]`, `.<name>.old`)."""
    return sorted(p for p in root.rglob(".*"))


def assert_user_error(code: int, err: str, phrases: tuple[str, ...] = ()) -> str:
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}\n{err}"
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith("qdeploy: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one last 'qdeploy: error:' line:\n{err[-2000:]}"
    for phrase in phrases:
        assert phrase.lower() in errors[0].lower(), f"{phrase!r} not in: {errors[0]}"
    return errors[0]


def noise_png(path: Path, rng, shape=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(30, 220, shape, dtype=np.uint8)).save(path)
    return path


def folder_dataset(root: Path, counts: dict[str, int], seed: int = 0, shape=(32, 32)) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_png(root / cls / f"{cls}_{i:03d}.png", rng, shape)
    return root


def copy_of(trained: Path, tmp: Path) -> Path:
    dst = tmp / "build"
    shutil.copytree(trained, dst)
    return dst


def severstal(root: Path, rows: list[tuple[str, int, str]], encoding: str = "utf-8") -> Path:
    rng = np.random.default_rng(3)
    (root / "train_images").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 64), dtype=np.uint8)).save(root / "train_images" / f"img{i:02d}.jpg")
    with open(root / "train.csv", "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "ClassId", "EncodedPixels"])
        w.writerows(rows)
    return root


def files_outside(root: Path, build: Path) -> set[Path]:
    """Every path under `root` that is not under `build` (to compare before and after a run)."""
    return {p for p in root.rglob("*") if not p.is_relative_to(build)}
