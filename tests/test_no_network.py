"""The default job needs no network: train + export with every socket connection refused."""
from __future__ import annotations

from qdeploy.cli import main

TINY = ["--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=200", "--set", "model.width=0.25",
        "--set", "train.float_epochs=1", "--set", "train.qat_epochs=1"]


def test_train_and_export_run_offline(no_network, tmp_path, capsys):
    code = main(["export", "--build-dir", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "network access attempted" not in err
    out = tmp_path / "default"
    for artifact in ("train/qat.pt", "train/metrics.json", "train/curves.png", "export/model.qonnx.onnx",
                     "export/stage.json"):
        assert (out / artifact).is_file(), artifact
