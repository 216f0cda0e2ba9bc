"""End to end on a small embedded-default job: train -> export -> fpga, npu, gpu ->
parity report; then a tampered FPGA artifact must fail the gate naming the node."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdeploy.cli import main
from qdeploy.recipe import load_recipe

# small and quick, yet a model that finds the (obvious: difficulty 0) defects: the quality
# gate fails a model at chance level (measured: float test AUROC 0.95, W4A4 0.91)
SMALL = [
    "--set", "dataset.size=[32, 32]", "--set", "dataset.num_images=360", "--set", "dataset.difficulty=0.0",
    "--set", "model.width=0.5", "--set", "train.float_epochs=6", "--set", "train.qat_epochs=2",
    "--set", "train.batch_size=16",
    "--set", "train.patience=3", "--set", "npu.qat_epochs=1", "--set", "gpu.qat_epochs=1",
    "--set", "fpga.target_fps=5000.0",
    # a barely trained model has near-tied logits; INT8 targets get a looser agreement gate here
    "--set", "gates.min_agreement=0.95",
]


def run(build, *args):
    return main([*args, "--build-dir", str(build), *SMALL])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    build = tmp_path_factory.mktemp("build")
    for target in ("fpga", "npu", "gpu"):
        assert run(build, "build", "--target", target) == 0
    return build / "default"


def test_every_stage_left_its_artifacts(built):
    assert (built / "train" / "qat.pt").is_file() and (built / "train" / "curves.png").is_file()
    meta = json.loads((built / "train" / "qat.json").read_text())
    assert 0.0 < meta["threshold"] < 1.0 and meta["metrics"]["test"]["n"] > 0
    assert (built / "export" / "model.qonnx.onnx").is_file()
    fpga = json.loads((built / "fpga" / "fpga_summary.json").read_text())
    assert fpga["bit_exact"] and all(s["exact"] for s in fpga["stages"])
    assert fpga["est_fps"] >= 0.95 * 5000 and fpga["resources"]["LUT"] <= 0.7 * fpga["capacity"]["LUT"]
    assert (built / "fpga" / "report" / "folding_config.json").is_file()
    assert any((built / "fpga").rglob("*.v")) or any((built / "fpga").rglob("*.cpp"))
    assert (built / "npu" / "model.xml").is_file() and (built / "npu" / "model.bin").is_file()
    assert (built / "gpu" / "model.qdq.onnx").is_file() and (built / "gpu" / "trt_build.sh").is_file()
    engine = json.loads((built / "gpu" / "engine.json").read_text())
    assert engine["engine"] is None and "tensorrt" in engine["skipped"]


def test_up_to_date_stages_are_skipped(built, capsys):
    assert run(built.parent, "build", "--target", "gpu") == 0
    err = capsys.readouterr().err
    assert "train: up to date" in err and "gpu: up to date" in err


def test_parity_report_covers_all_targets(built):
    assert run(built.parent, "parity") == 0
    report = json.loads((built / "report" / "report.json").read_text())
    assert set(report["targets_built"]) == {"fpga", "npu", "gpu"}
    from reference.schema import ReportSchemaError, validate_report

    validate_report(report)  # what the producers wrote is what the contract and the renderer read
    renamed = json.loads(json.dumps(report))
    renamed["fpga"]["stages"][0]["first_divergence_node"] = renamed["fpga"]["stages"][0].pop("first_divergent_node")
    with pytest.raises(ReportSchemaError, match=r"fpga\.stages\.0\.first_divergent_node"):
        validate_report(renamed)
    assert {"float", "qat", "fpga", "npu_qat", "npu", "gpu_qat", "gpu"} <= set(report["models"])
    html = (built / "report" / "report.html").read_text()
    fpga = report["models"]["fpga"]["agreement_reference"]
    assert fpga["argmax_agreement"] == 1.0 and fpga["max_abs_diff_rel"] <= 1e-6
    import openvino as ov

    has_npu = any(d.startswith("NPU") for d in ov.Core().available_devices)
    # the report names the device that ran the IR: the NPU where there is one, else the CPU
    assert report["models"]["npu"]["device"].startswith("NPU" if has_npu else "CPU")
    assert report["machine"]["cpu"] and set(report["machine"]["features"]) >= {"avx2", "avx512_vnni", "amx_int8"}
    assert "measured on" in html and report["machine"]["int8_dot"] in html
    assert "data:image/png;base64," in html and "FPGA" in html
    assert all(g["passed"] for g in report["gates"])
    assert [c["class"] for c in report["cams"]] == ["defect"] and "Grad-CAM" in html
    assert (built / "report" / report["cams"][0]["file"]).is_file()


def test_tampered_threshold_fails_the_gate_naming_the_node(built, tmp_path, capsys):
    work = tmp_path / "copy"
    shutil.copytree(built.parent, work)
    final = work / "default" / "fpga" / "intermediate_models" / "hw_codegen.onnx"
    model = onnx.load(final)
    # the first thresholding layer's thresholds live in an initializer named by the node's 2nd input
    node = next(n for n in model.graph.node if n.op_type.startswith(("Thresholding", "MVAU")) and len(n.input) > 1)
    thr_name = node.input[-1]
    init = next(i for i in model.graph.initializer if i.name == thr_name)
    t = numpy_helper.to_array(init).copy()
    t += 3  # shift every threshold: activations of that layer change
    init.CopyFrom(numpy_helper.from_array(t.astype(numpy_helper.to_array(init).dtype), thr_name))
    onnx.save(model, final)
    code = run(work, "parity")
    err = capsys.readouterr().err
    assert code == 3
    assert "parity gate failed: fpga" in err and "first divergent node" in err
    # the report, rendered from this real run, names the node in the per-stage table
    report = json.loads((work / "default" / "report" / "report.json").read_text())
    bad = [s for s in report["fpga"]["stages"] if not s["exact"]]
    assert bad and bad[0]["stage"] == "hw_codegen" and bad[0]["first_divergent_node"].startswith(node.name)
    md = (work / "default" / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| hw_codegen |"))
    assert node.name in row and "–" not in row.split("|")[-2]


def test_a_changed_gate_reruns_parity_only(built, tmp_path, capsys):
    """gates are in the parity step's digest: a stricter gate is applied on rebuild, the
    target's build before it is kept."""
    work = tmp_path / "copy"
    shutil.copytree(built.parent, work)
    capsys.readouterr()
    assert main(["build", "--target", "gpu", "--build-dir", str(work), *SMALL,
                 "--set", "gates.max_recall_drop=0.5"]) == 0
    err = capsys.readouterr().err
    assert "gpu [5/5] step_parity" in err and "step_nncf_qat: up to date" in err and "train: up to date" in err
    parity = json.loads((work / "default" / "gpu" / "parity.json").read_text())
    assert [g["limit"] for g in parity["gates"] if g["gate"] == "recall_drop_at_operating_point"] == [0.5]
    code = main(["build", "--target", "gpu", "--build-dir", str(work), *SMALL, "--set", "gates.min_agreement=1.01"])
    assert code == 2  # a bound outside [0, 1] is refused by the recipe, before anything runs


def test_default_recipe_file_matches_embedded_default():
    from pathlib import Path

    assert load_recipe(Path(__file__).parents[1] / "recipes" / "default.yaml") == load_recipe(None)


def test_int8_only_model_builds_for_npu_and_gpu_without_brevitas_qat(tmp_path):
    """effnet_b0 (SiLU + squeeze-excite): float training, then NNCF INT8 QAT per target."""
    tiny = ["--set", "model.name=effnet_b0", "--set", "model.width=0.5", "--set", "dataset.size=[32, 32]",
            "--set", "dataset.num_images=360", "--set", "dataset.difficulty=0.0", "--set", "train.batch_size=16",
            "--set", "train.lr=0.005", "--set", "train.float_epochs=6", "--set", "npu.qat_epochs=1",
            "--set", "gpu.qat_epochs=1", "--set", "gates.max_recall_drop=1.0", "--set", "gates.min_agreement=0.9"]
    for target in ("npu", "gpu"):
        assert main(["build", "--target", target, "--build-dir", str(tmp_path), *tiny]) == 0
    d = tmp_path / "default"
    assert (d / "train" / "float.pt").is_file() and not (d / "train" / "qat.pt").exists()
    for target in ("npu", "gpu"):
        parity = json.loads((d / target / "parity.json").read_text())
        assert parity["models"][target]["agreement_reference"]["argmax_agreement"] >= 0.9
    assert main(["export", "--build-dir", str(tmp_path), *tiny]) == 2  # no Brevitas model to export


# slow: in the full fast suite, the pytest process died with SIGSEGV (no Python frame) right
# as this test started its first subprocess, on two machines; alone or after test_openvino it
# passes. The fast suite covers both kernel families with the toy model (tests/test_cpu_isa.py).
@pytest.mark.slow
@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="ONEDNN_MAX_CPU_ISA names x86 ISAs")
def test_npu_twin_is_the_same_on_a_cpu_without_vnni(built, tmp_path):
    """The parity report run with oneDNN capped to AVX2 (what an AVX2-only CPU executes):
    the NPU twin (the IR's exact semantics) gives the same logits as uncapped, so the gates
    decide the same; the CPU's own int8 kernels are reported and, where they saturate,
    named in a warning with the fix."""
    import os
    import subprocess
    import sys

    def parity(build, isa):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = [sys.executable, "-m", "qdeploy", "parity", "--build-dir", str(build), *SMALL]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        report = build / "default" / "report"
        return json.loads((report / "report.json").read_text()), (report / "report.md").read_text()

    work = tmp_path / "copy"
    shutil.copytree(built.parent, work)
    (capped, capped_md), (free, _) = parity(work, "AVX2"), parity(work, None)
    assert capped["machine"]["int8_dot"] == "vpmaddubsw" and capped["machine"]["onednn_max_cpu_isa"] == "AVX2"
    a, b = capped["models"]["npu"], free["models"]["npu"]
    assert a["extra"]["cpu_int8_kernels"]["int8_dot"] == "vpmaddubsw"
    assert a["extra"]["cpu_int8_kernels"]["faithful"] is False and "npu.device: cpu" in a["extra"]["warning"]
    assert [g["passed"] for g in capped["gates"]] == [g["passed"] for g in free["gates"]]
    # both twins are exact executions of the same IR: at most float32 summation order apart
    assert abs(a["agreement_reference"]["max_abs_diff"] - b["agreement_reference"]["max_abs_diff"]) <= \
        a["extra"]["one_step_bound"]
    assert a["metrics"]["accuracy"] == pytest.approx(b["metrics"]["accuracy"], abs=1 / a["metrics"]["n"])
    assert "WARNING (NPU target" in capped_md and "vpmaddubsw" in capped_md
