"""The same recipe and seed give the same bytes.

Two fresh builds (dataset generation, float training, QAT, export) of one tiny recipe, the
second in a separate process (other hash seed, fresh torch state), must give byte-identical
QONNX exports and test logits and identical metrics and training histories. The FPGA stage,
rerun on the same export, must give identical FINN estimates and folding (slow).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qdeploy.cli import main

TINY = ["--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=200", "--set", "model.width=0.25",
        "--set", "train.float_epochs=1", "--set", "train.qat_epochs=1"]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("first") / "build"
    assert main(["export", "--build-dir", str(first), *TINY]) == 0
    second = tmp_path_factory.mktemp("second") / "build"
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    done = subprocess.run([sys.executable, "-m", "qdeploy", "export", "--build-dir", str(second), *TINY],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return first / "default", second / "default"


def test_same_recipe_and_seed_give_byte_identical_qonnx(two_builds):
    a, b = two_builds
    qonnx = "export/model.qonnx.onnx"
    assert (a / qonnx).read_bytes() == (b / qonnx).read_bytes()
    for logits in ("train/float_test_logits.npy", "train/qat_test_logits.npy"):
        assert (a / logits).read_bytes() == (b / logits).read_bytes(), logits


def test_same_recipe_and_seed_give_identical_metrics(two_builds):
    a, b = two_builds
    ma, mb = (json.loads((d / "train" / "metrics.json").read_text().replace(str(d.parent), "BUILD")) for d in two_builds)
    assert ma == mb
    for name in ("float", "qat"):  # the training histories too (minus wall-clock times)
        ha, hb = (json.loads((d / "train" / f"{name}.json").read_text())["history"] for d in (a, b))
        for epoch in ha["epochs"] + hb["epochs"]:
            epoch.pop("seconds")
        assert ha == hb


@pytest.mark.slow
def test_fpga_rerun_gives_identical_estimates_and_folding(two_builds, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(two_builds[0].parent, build)
    fpga = ["build", "--target", "fpga", "--build-dir", str(build), *TINY, "--set", "fpga.target_fps=2000.0",
            "--set", "gates.check_quality=false"]  # one epoch: the same result twice, not a good one
    report = build / "default" / "fpga" / "report"

    def snapshot() -> dict[str, bytes]:
        files = sorted(report.glob("estimate_*.json")) + [report / "folding_config.json"]
        assert len(files) > 1 and all(f.is_file() for f in files)
        return {f.name: f.read_bytes() for f in files}

    assert main(fpga) == 0
    first = snapshot()
    assert main([*fpga, "--force"]) == 0  # --force reruns the last stage (fpga) from scratch
    assert snapshot() == first
