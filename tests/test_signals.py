"""SIGTERM and SIGHUP (CI cancel, `timeout`, `docker stop`, a closed terminal) end a build like
Ctrl-C: one line, exit 128 + signal, no traceback, no half-written artifact, resumable."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_mid_training_is_one_line_and_resumable(tmp_path, sig):
    build = tmp_path / "build"
    cmd = [sys.executable, "-m", "qdeploy", "train", "--build-dir", str(build),
           "--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=400", "--set", "train.float_epochs=200",
           "--set", "train.patience=200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    deadline = time.monotonic() + 240
    # wait until training runs (the dataset is written), then signal
    while not (build / "default" / "train").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("qdeploy:")]
    assert lines == [f"qdeploy: stopped by {signal.Signals(sig).name}; finished stages are kept, rerun to resume"]
    assert "Traceback" not in err
    # nothing half-written: no temporary files left, and the unfinished stage is not marked done
    leftovers = [p for p in build.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []
    assert not (build / "default" / "train" / "stage.json").exists()


def test_sigterm_to_a_sweep_stops_its_training_children_too(tmp_path):
    """`qdeploy sweep` trains in child processes: a SIGTERM to the sweep stops them (each
    child says so in its log, keeps nothing half-written) and the sweep exits 143."""
    build = tmp_path / "build"
    cmd = [sys.executable, "-m", "qdeploy", "sweep", "--build-dir", str(build), "--seeds", "0", "1", "--jobs", "2",
           "--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=400", "--set", "train.float_epochs=200",
           "--set", "train.patience=200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    logs = [build / "default" / "sweep" / "native" / f"seed{s}" / "train.log" for s in (0, 1)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not all(
            log.is_file() and "step_train_float" in log.read_text() for log in logs):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    for log in logs:
        assert "qdeploy: stopped by SIGTERM" in log.read_text()
    assert not any(p.name == "stage.json" for p in build.rglob("*"))
    assert [p for p in build.rglob("*") if ".tmp" in p.name] == []
