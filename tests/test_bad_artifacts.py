"""Artifacts, stage markers, the build directory, the machine and signals, through the real CLI.

- a stage is up to date only if what it wrote is still there, unchanged: a stage.json that is
  a list or a directory, or a deleted artifact, makes the stage (and the stages after it) run
  again instead of "up to date";
- bring-your-own ONNX models with inputs qdeploy cannot feed are one line;
- --build-dir that is a file, a full disk inside torch.save, a diverging loss: one line;
- temporaries of killed runs (kill -9, also during data generation) are removed by the next run,
  never those of a run still active.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corpus import RECIPE, TINY, assert_user_error, copy_of, debris, noise_png, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    build = copy_of(trained, tmp_path_factory.mktemp("exported"))
    from qdeploy.cli import main

    assert main(["export", "--build-dir", str(build), *TINY]) == 0
    return build


# ---------------------------------------------------------------------------- stage markers


def _rerun(capsys, build: Path) -> str:
    code, err = run(capsys, "export", "--build-dir", str(build), *TINY)
    assert code == 0, err
    marker = json.loads((build / RECIPE / "export" / "stage.json").read_text())
    assert isinstance(marker, dict) and "model.qonnx.onnx" in marker["outputs"]
    assert not debris(build), debris(build)
    return err


@pytest.mark.parametrize("tamper, why", [
    (lambda d: (d / "stage.json").write_text("[1, 2, 3]\n"), None),
    (lambda d: ((d / "stage.json").unlink(), (d / "stage.json").mkdir(), (d / "stage.json" / "x").write_text("x")), None),
    (lambda d: (d / "model.qonnx.onnx").unlink(), "model.qonnx.onnx is missing"),
    (lambda d: (d / "check.json").write_text("{}\n"), "check.json changed"),
], ids=["stage-json-is-a-list", "stage-json-is-a-directory", "artifact-deleted", "artifact-changed"])
def test_a_stage_whose_marker_or_outputs_do_not_verify_runs_again(exported, tmp_path, capsys, tamper, why):
    build = copy_of(exported, tmp_path)
    tamper(build / RECIPE / "export")
    err = _rerun(capsys, build)
    assert "export: up to date" not in err and "export [1/1] step_export_qonnx" in err
    assert "train: up to date" in err
    if why:
        assert f"export: {why} since the stage finished" in err
    assert (build / RECIPE / "export" / "model.qonnx.onnx").is_file()


def test_a_deleted_checkpoint_reruns_its_stage_and_the_stages_after_it(exported, tmp_path, capsys):
    build = copy_of(exported, tmp_path)
    (build / RECIPE / "train" / "qat.pt").unlink()
    err = _rerun(capsys, build)
    assert "train: qat.pt is missing since the stage finished: running it again" in err
    assert "train: up to date" not in err and "export: up to date" not in err
    assert "step_train_qat" in err and "step_export_qonnx" in err
    assert (build / RECIPE / "train" / "qat.pt").is_file()


def test_an_intact_stage_is_up_to_date(exported, tmp_path, capsys):
    build = copy_of(exported, tmp_path)
    err = _rerun(capsys, build)
    assert "train: up to date" in err and "export: up to date" in err and "step_export_qonnx" not in err


# ---------------------------------------------------------------------------- bring your own ONNX


def _onnx(path: Path, inputs, with_input_node: bool = True) -> Path:
    import onnx
    from onnx import TensorProto, helper

    if with_input_node:
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, inputs)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, inputs)])
    else:
        c = helper.make_tensor("c", TensorProto.FLOAT, [1, 2], [1.0, 2.0])
        graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=c)], "g", [],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00garbage" * 10)
    return path


def _samples(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        noise_png(tmp / "samples" / f"s{i}.png", rng)
    return tmp / "samples"


BYOM = {
    "rank-2-input": (lambda t: _onnx(t / "m.onnx", [1, 16]), ("m.onnx", "rank 2", "[N, C, H, W]")),
    "no-inputs": (lambda t: _onnx(t / "m.onnx", None, with_input_node=False), ("m.onnx", "no graph input")),
    "symbolic-dims": (lambda t: _onnx(t / "m.onnx", ["N", 1, "H", "W"]), ("m.onnx", "symbolic", "[N, 1, H, W]")),
    "model-is-a-directory": (lambda t: (t / "m.onnx").mkdir() or t / "m.onnx", ("m.onnx", "is a directory")),
    "not-onnx": (lambda t: _garbage(t / "m.onnx"), ("m.onnx", "not", "onnx")),
}


@pytest.mark.parametrize("case", list(BYOM))
def test_bring_your_own_onnx_that_cannot_be_fed_is_one_line(case, tmp_path, capsys):
    make, phrases = BYOM[case]
    model = make(tmp_path)
    code, err = run(capsys, "build", "--target", "fpga", "--model", str(model), "--samples", str(_samples(tmp_path)),
                    "--build-dir", str(tmp_path / "build"))
    print(assert_user_error(code, err, phrases))
    assert not (tmp_path / "build" / RECIPE / "fpga-byom").exists()


# ---------------------------------------------------------------------------- the build directory


def _file(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("not a folder")
    return p


BUILD_DIRS = {
    "build-dir-is-a-file": (lambda t: _file(t / "b"), ("--build-dir", "is a file, not a directory")),
    "build-dir-parent-is-a-file": (lambda t: _file(t / "b") / "sub", ("--build-dir", "is a file", "choose another")),
    "recipe-folder-is-a-file": (lambda t: _file(t / "b" / RECIPE).parent, ("default", "is a file where the build folder")),
    "stage-folder-is-a-file": (lambda t: _file(t / "b" / RECIPE / "train").parent.parent, ("train", "stage's folder")),
}


@pytest.mark.parametrize("case", list(BUILD_DIRS))
def test_a_build_dir_that_cannot_hold_the_build_is_one_line(case, tmp_path, capsys):
    make, phrases = BUILD_DIRS[case]
    build = make(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, err = run(capsys, "train", *TINY, "--build-dir", str(build))
    print(assert_user_error(code, err, phrases))
    assert sorted(p for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------- the machine, the loss


def test_enospc_inside_torch_save_is_one_line_about_the_build_dirs_disk(tmp_path, capsys, monkeypatch):
    """torch.save reports a failed write as RuntimeError: writing to /dev/full gives the real one."""
    import torch

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **kw: real_save(obj, "/dev/full", *a, **kw))
    build = tmp_path / "build"
    code, err = run(capsys, "train", *TINY, "--build-dir", str(build))
    monkeypatch.undo()
    print(assert_user_error(code, err, ("no space left", "float.pt", "free disk space", "--build-dir")))
    assert not (build / RECIPE / "train" / "float.pt").exists() and not debris(build)


def test_a_nan_loss_stops_training_naming_the_learning_rate(tmp_path, capsys, monkeypatch):
    import quant.train
    from quant.losses import make_loss

    def overflowing(*args, **kwargs):  # what an lr that makes the weights overflow produces
        ce = make_loss(*args, **kwargs)
        return lambda logits, target: ce(logits, target) * float("inf")

    monkeypatch.setattr(quant.train, "make_loss", overflowing)
    build = tmp_path / "build"
    code, err = run(capsys, "train", *TINY, "--build-dir", str(build))
    print(assert_user_error(code, err, ("training diverged", "loss is inf", "train.lr")))
    assert not (build / RECIPE / "train" / "float.pt").exists() and not debris(build)


# ---------------------------------------------------------------------------- killed runs


def _python(code: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stale_run(capsys, build: Path) -> str:
    """A command that takes the build lock and fails in seconds (an unknown part)."""
    code, err = run(capsys, "build", "--target", "fpga", *TINY, "--set", "fpga.part=zcu999", "--build-dir", str(build))
    assert_user_error(code, err, ("zcu999",))
    return err


def test_temporaries_of_a_killed_write_are_removed_by_the_next_run(tmp_path, capsys):
    build = tmp_path / "build"
    target = build / RECIPE / "train" / "float.pt"
    proc = _python("import os, sys\nfrom core.atomic import atomic_path, atomic_dir\n"
                   f"with atomic_dir({str(build / '_data' / 'synthetic-x')!r}) as d:\n"
                   "    (d / 'a.png').write_bytes(b'x')\n"
                   f"    with atomic_path({str(target)!r}) as t:\n"
                   "        t.write_bytes(b'half')\n"
                   "        os.kill(os.getpid(), 9)\n", tmp_path)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = debris(build)
    assert len(left) >= 2, left  # a temp file and a temp dir, as kill -9 leaves them
    (build / RECIPE / "train" / ".keep-me").write_text("a user's hidden file")  # not a temporary's name
    err = _stale_run(capsys, build)
    assert "removed" in err and "interrupted run" in err
    assert debris(build) == [build / RECIPE / "train" / ".keep-me"]


def test_temporaries_of_a_run_still_active_are_kept(tmp_path, capsys):
    build = tmp_path / "build"
    (build / RECIPE).mkdir(parents=True)
    live = build / RECIPE / ".model.onnx.abcd1234.onnx.tmp"
    live.write_bytes(b"being written")
    fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # what an active qdeploy run holds
    try:
        err = _stale_run(capsys, build)
        assert live.exists() and "removed" not in err
    finally:
        os.close(fd)
    _stale_run(capsys, build)
    assert not live.exists()


def test_kill_9_during_data_generation_leaves_nothing_the_next_run_does_not_clean(tmp_path, capsys):
    build = tmp_path / "build"
    proc = subprocess.Popen([sys.executable, "-m", "qdeploy", "train", "--build-dir", str(build),
                             "--set", "dataset.num_images=20000", "--set", "dataset.size=[32, 32]"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    data = build / "_data"
    deadline = time.monotonic() + 120
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in data.glob(".synthetic-*") if p.is_dir()] if data.is_dir() else []
        if partial and sum(1 for _ in partial[0].rglob("*.png")) > 50:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert partial and partial[0].is_dir(), "the generation did not start"
    _stale_run(capsys, build)
    assert not debris(build), debris(build)
    assert not any(data.iterdir()), list(data.iterdir())  # no half-generated dataset is taken for a whole one


def test_the_artifact_corpus_is_large_enough():
    assert len(BYOM) + len(BUILD_DIRS) >= 9
