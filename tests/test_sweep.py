"""`qdeploy sweep`: a recipe trained once per seed, mean / sd / worst of each metric with the
machine; real (small) training runs, aggregated from what each run wrote."""
import json
import statistics
import subprocess
import sys

import pytest

from core import machine
from qdeploy.cli import main
from reference.seed_spread import run_metrics, spread

TINY = ["--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=120", "--set", "model.width=0.5",
        "--set", "train.float_epochs=2", "--set", "train.qat_epochs=1", "--set", "train.batch_size=16"]


def test_spread_is_mean_sample_sd_and_extremes_per_metric():
    runs = {0: {"a": 0.99, "b": 1.0}, 1: {"a": 0.98}, 2: {"a": 0.995}}
    s = spread(runs)
    assert s["a"]["mean"] == pytest.approx(statistics.mean([0.99, 0.98, 0.995]))
    assert s["a"]["sd"] == pytest.approx(statistics.stdev([0.99, 0.98, 0.995]))
    assert (s["a"]["min"], s["a"]["max"], s["a"]["n"]) == (0.98, 0.995, 3)
    assert s["b"] == {"mean": 1.0, "sd": 0.0, "min": 1.0, "max": 1.0, "n": 1, "by_seed": {"0": 1.0}}


def test_qat_cost_is_float_minus_qat_in_points_and_nan_metrics_are_left_out():
    m = {"float": {"val": {"accuracy": 0.9}, "test": {"accuracy": 0.99, "ap": float("nan")}},
         "qat": {"val": {"accuracy": 0.8}, "test": {"accuracy": 0.985, "ap": float("nan")}}}
    rows = run_metrics(m)
    assert rows["qat cost accuracy (points)"] == pytest.approx(0.5)
    assert "float test ap" not in rows and "qat cost ap (points)" not in rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    build = tmp_path_factory.mktemp("build")
    done = subprocess.run([sys.executable, "-m", "qdeploy", "sweep", "--build-dir", str(build), "--seeds", "3", "4",
                           "--jobs", "2", "--isa", "avx2", *TINY], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return build / "default" / "sweep" / "avx2", done.stdout + done.stderr


def test_sweep_aggregates_what_each_seed_measured(swept):
    out, console = swept
    result = json.loads((out / "sweep.json").read_text())
    per_seed = {s: json.loads((out / f"seed{s}" / "default" / "train" / "metrics.json").read_text()) for s in (3, 4)}
    for key in ("float test accuracy", "qat test auroc", "qat cost accuracy (points)"):
        values = [run_metrics(per_seed[s])[key] for s in (3, 4)]
        assert result["spread"][key]["mean"] == pytest.approx(statistics.mean(values))
        assert result["spread"][key]["sd"] == pytest.approx(statistics.stdev(values))
        assert result["spread"][key]["min"] == min(values)
    assert result["seeds"] == [3, 4] and "W4A4 test accuracy" in console
    table = (out / "sweep.md").read_text()
    acc = result["spread"]["qat test accuracy"]
    assert f"| qat test accuracy | {acc['mean']:.4f} +- {acc['sd']:.4f} |" in table and result["machine_summary"] in table
    # the seed is each run's seed: different splits of the generated data, different models
    sizes = [per_seed[s]["split_sizes"] for s in (3, 4)]
    assert sizes[0] == sizes[1]
    weights = [(out / f"seed{s}" / "default" / "train" / "float.pt").read_bytes() for s in (3, 4)]
    assert weights[0] != weights[1]


def test_sweep_under_the_avx2_cap_records_it(swept):
    out, _ = swept
    result = json.loads((out / "sweep.json").read_text())
    caps = machine.ISA_CAPS["avx2"]
    assert result["machine"]["onednn_max_cpu_isa"] == caps["ONEDNN_MAX_CPU_ISA"]
    assert result["machine"]["float_caps"]["ATEN_CPU_CAPABILITY"] == caps["ATEN_CPU_CAPABILITY"]
    assert "float kernels capped" in result["machine_summary"]


def test_a_second_sweep_reuses_the_finished_seeds(swept, capsys):
    out, _ = swept
    before = {s: (out / f"seed{s}" / "default" / "train" / "stage.json").stat().st_mtime_ns for s in (3, 4)}
    assert main(["sweep", "--build-dir", str(out.parents[2]), "--seeds", "3", "4", "--isa", "avx2", *TINY]) == 0
    after = {s: (out / f"seed{s}" / "default" / "train" / "stage.json").stat().st_mtime_ns for s in (3, 4)}
    assert before == after
    assert "up to date" in (out / "seed3" / "train.log").read_text()


@pytest.mark.parametrize("args, says", [
    (["--seeds", "1", "1"], "distinct seeds"),
    (["--isa", "avx3"], "unknown --isa 'avx3'"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_bad_sweep_arguments_say_which_in_one_line(tmp_path, capsys, args, says):
    assert main(["sweep", "--build-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "default" / "sweep").exists()
