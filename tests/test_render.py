"""The parity report renders to plots, Markdown, HTML and a console table, whatever parts it has."""
from __future__ import annotations

import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from compilers.finn.parity import StageParity
from core import machine
from qdeploy.recipe import GateConfig
from quant import metrics
from reference.gates import evaluate_gates
from reference.plots import curves_for
from reference.render import print_console_summary, render_report
from reference.schema import validate_report

CLASSES = ["ok", "scratch", "patch", "pit"]

LABELS = {
    "float": ("Float (PyTorch)", "golden", None, "torch", "cpu", "fp32", None),
    "qat": ("QAT W4A4 (Brevitas)", "qat", None, "torch+brevitas", "cpu", "W4A4", None),
    "fpga": ("FPGA (FINN dataflow, python exec)", "target", "fpga", "finn-python", "zcu104 (simulated)", "W4A4", "qat"),
    "npu_qat": ("NPU QAT INT8 (NNCF)", "qat", "npu", "torch+nncf", "cpu", "INT8", None),
    "npu": ("NPU (OpenVINO IR)", "target", "npu", "openvino", "CPU", "INT8", "npu_qat"),
    "gpu_qat": ("GPU QAT INT8 (NNCF)", "qat", "gpu", "torch+nncf", "cpu", "INT8", None),
    "gpu": ("GPU (TensorRT engine)", "target", "gpu", "tensorrt", "NVIDIA GPU (cuda:0)", "INT8", "gpu_qat"),
}


def make_logits(keys, n=600, seed=0, classes=CLASSES, npu_noise=0.05):
    """Logits of each model on one synthetic test set: targets are noisy copies of their
    QAT reference (the FPGA an exact one), so agreement and metrics come out realistic."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(classes), size=n, p=[0.7] + [0.3 / (len(classes) - 1)] * (len(classes) - 1))
    out = {"float": np.eye(len(classes))[labels] * 2.5 + rng.normal(0, 1.0, (n, len(classes)))}
    noise = {"qat": 0.15, "npu_qat": 0.15, "gpu_qat": 0.15, "npu": npu_noise, "gpu": 1e-3}
    for key in keys:
        if key == "float":
            continue
        base = out[LABELS[key][6]] if LABELS[key][6] else out["float"]
        out[key] = base.copy() if key == "fpga" else base + rng.normal(0, noise[key], base.shape)
    return labels, out


def fpga_section():
    names = ["Thresholding_0", "ConvolutionInputGenerator_0", "MVAU_0", "ConvolutionInputGenerator_1", "MVAU_1",
             "DuplicateStreams_0", "ConvolutionInputGenerator_2", "MVAU_2", "AddStreams_0", "StreamingMaxPool_0",
             "ConvolutionInputGenerator_3", "MVAU_3", "MVAU_4", "GlobalAccPool_0", "MVAU_5", "LabelSelect_0"]
    rng = np.random.default_rng(1)
    layers = []
    for i, name in enumerate(names):
        mvau = name.startswith("MVAU")
        layers.append({"name": name, "op_type": name.rsplit("_", 1)[0] + "_hls", "cycles": int(rng.integers(2000, 9000)),
                       "LUT": int(rng.integers(4000, 22000) if mvau else rng.integers(200, 2500)),
                       "BRAM_18K": int(rng.integers(2, 30) if mvau else rng.integers(0, 4)), "URAM": 0,
                       "DSP": int(rng.integers(0, 8) if mvau else 0)})
    layers[7]["cycles"] = 9800  # the bottleneck
    res = {r: sum(layer[r] for layer in layers) for r in ("LUT", "BRAM_18K", "URAM", "DSP")}
    return {"part": "xczu7ev-ffvc1156-2-e (ZCU104)", "clock_mhz": 200.0, "est_fps": 200e6 / 9800, "target_fps": 20000.0,
            "resources": res, "capacity": {"LUT": 230400, "BRAM_18K": 624, "URAM": 96, "DSP": 1728}, "budget": 0.7,
            "per_layer": layers,
            # the producer's own record type: what compilers.finn.parity writes
            "stages": [StageParity("streamline", 450, 1.0, 2.4e-7, 2.4e-8, True, 1.0).to_dict(),
                       StageParity("convert_to_hw", 450, 1.0, 0.0, 0.0, True, 1.0).to_dict(),
                       StageParity("apply_folding_config", 450, 1.0, 0.0, 0.0, True, 1.0).to_dict(),
                       StageParity("hw_codegen", 450, 0.995, 0.25, 0.025, False, 1.0,
                                   first_divergence={"node": "MVAU_2", "op_type": "MVAU_hls",
                                                     "detail": "integer output differs"}).to_dict()],
            "setfolding": {"est_fps": 15000.0, "LUT": int(res["LUT"] * 1.3)}}


def bench_section():
    rows = [("torch", None, "fp32", "cpu", "measured", 800), ("onnxruntime", None, "fp32", "cpu", "measured", 1400),
            ("openvino", "npu", "INT8", "CPU", "measured", 2600), ("tensorrt", "gpu", "INT8", "cuda:0", "measured", 9000),
            ("finn", "fpga", "W4A4", "zcu104", "estimate", 20400)]
    results = []
    for batch in (1, 64):
        for rt, tgt, prec, dev, kind, ips in rows:
            ips = ips if kind == "estimate" else ips * (1 if batch == 1 else 3.5)
            results.append({"runtime": rt, "target": tgt, "precision": prec, "device": dev, "batch": batch,
                            "mode": "sync", "images_per_s": float(ips), "median_ms_per_batch": 1000 * batch / ips,
                            "kind": kind, "ratio_vs": {} if rt == "torch" else {"torch": ips / (800 * (1 if batch == 1 else 3.5))}})
    return {"schema": "qdeploy.bench/1", "machine": "test-box (2 cores)", "results": results}


def make_report(keys=tuple(LABELS), fpga=True, bench=True, ok_index=0, classes=CLASSES, npu_noise=0.05):
    labels, logits = make_logits(keys, classes=classes, npu_noise=npu_noise)
    thr = metrics.choose_threshold(logits["float"], labels, ok_index, target_recall=0.95)
    models = {}
    for key in keys:
        label, role, target, runtime, device, precision, ref = LABELS[key]
        extra = {"first_divergent_node": None} if key == "fpga" else {}
        if key == "npu":
            extra = {"requested_device": "NPU", "ov_version": "2025.3"}
        models[key] = {
            "label": label, "role": role, "target": target, "runtime": runtime, "device": device,
            "precision": precision, "reference": ref,
            "metrics": metrics.evaluate(logits[key], labels, ok_index, threshold=thr, report_fpr=0.01),
            "agreement_reference": metrics.agreement(logits[ref], logits[key]) if ref else None,
            "agreement_float": None if key == "float" else metrics.agreement(logits["float"], logits[key]),
            "curves": curves_for(logits[key], labels, ok_index), "extra": extra}
    report = {
        "schema": "qdeploy.report/1", "recipe": "default", "qdeploy_version": "0.1.0",
        "dataset": {"classes": classes, "ok_index": ok_index, "n_test": int(len(labels)),
                    "notes": ["synthetic surfaces, 64x64", "dedup: 0 duplicates across splits"]},
        "operating_point": {"threshold": thr, "target_recall": 0.95, "target_fpr": None, "report_fpr": 0.01},
        "models": models,
        "fpga": fpga_section() if fpga else None,
        "gates": evaluate_gates(models, GateConfig()),
        "bench": bench_section() if bench else None,
    }
    report["machine"] = machine.identity()
    # what render sees is what report.json holds, and what the producers are held to
    return validate_report(json.loads(json.dumps(report)))


def external_refs(page: str) -> list[str]:
    refs = re.findall(r"""(?:src|href|action|poster)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    refs += re.findall(r"url\(\s*['\"]?([^)'\"]+)", page) + re.findall(r"@import\s+([^;]+)", page)
    return [r for r in refs if not r.startswith("data:")]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    report = make_report()
    out = tmp_path_factory.mktemp("report")
    return report, out, render_report(report, out)


# ---------------------------------------------------------------------------- curves_for


def test_curves_for_matches_sklearn_when_small_and_is_downsampled_when_large():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    logits = np.stack([np.zeros(50), labels * 1.5 + rng.normal(0, 1, 50)], axis=1)
    c = curves_for(logits, labels, ok_index=0)
    scores = metrics.defect_scores(logits, 0)
    fpr, tpr, _ = roc_curve(labels == 1, scores)
    prec, rec, _ = precision_recall_curve(labels == 1, scores)
    assert c["roc"]["fpr"] == pytest.approx(fpr, abs=1e-6) and c["roc"]["tpr"] == pytest.approx(tpr, abs=1e-6)
    assert c["pr"]["precision"] == pytest.approx(prec, abs=1e-6) and c["pr"]["recall"] == pytest.approx(rec, abs=1e-6)

    labels = rng.integers(0, 3, 5000)
    logits = np.eye(3)[labels] + rng.normal(0, 1, (5000, 3))
    c = curves_for(logits, labels, ok_index=0, max_points=50)
    assert 40 <= len(c["roc"]["fpr"]) <= 50 and len(c["roc"]["fpr"]) == len(c["roc"]["tpr"])
    assert 40 <= len(c["pr"]["recall"]) <= 50 and len(c["pr"]["recall"]) == len(c["pr"]["precision"])
    assert (c["roc"]["fpr"][0], c["roc"]["tpr"][0]) == (0.0, 0.0) and (c["roc"]["fpr"][-1], c["roc"]["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(c["roc"]["fpr"]) >= 0) and np.all(np.diff(c["roc"]["tpr"]) >= 0)
    json.dumps(c)  # plain floats


def test_curves_for_is_none_without_a_defect_score():
    logits = np.random.default_rng(0).normal(size=(20, 3))
    assert curves_for(logits, np.arange(20) % 3, ok_index=None) is None  # NEU: no ok class
    assert curves_for(logits, np.zeros(20, int), ok_index=0) is None  # only ok images


# ---------------------------------------------------------------------------- full report


def test_full_report_writes_decodable_plots(full):
    _, out, paths = full
    assert set(paths) == {"md", "html", "confusion", "roc", "pr", "agreement", "fpga_resources", "fpga_cycles",
                          "fpga_stages", "throughput"}
    for name, p in paths.items():
        assert p.is_file() and p.stat().st_size > 0, name
        if p.suffix == ".png":
            assert p.parent == out / "plots"
            img = np.asarray(Image.open(p).convert("L"))
            assert img.shape[0] >= 300 and img.shape[1] >= 500, (name, img.shape)
            assert img.std() > 5, f"{name} looks blank"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_markdown_has_every_model_gate_section_and_relative_images(full):
    report, out, paths = full
    md = paths["md"].read_text()
    for m in report["models"].values():
        assert m["label"] in md
    for g in report["gates"]:
        assert g["gate"] in md and g["message"].replace("|", "\\|") in md  # table cells escape |
    assert any(not g["passed"] for g in report["gates"]), "the fixture must hold a failing gate"
    assert "**FAIL**" in md and "**PASS**" in md and "Parity: FAIL" in md
    for heading in ("## Models on the test set", "## Gates", "## FPGA (FINN)", "### Resources", "### Per layer",
                    "### Folding: ours vs FINN SetFolding", "### Parity per lowering stage", "## Intel NPU (OpenVINO)",
                    "## NVIDIA GPU (TensorRT)", "## Throughput", "## Dataset and operating point"):
        assert heading in md, heading
    assert "NPU not present: IR executed on CPU" in md
    assert "(bottleneck)" in md and "estimate" in md and "FINN SetFolding" in md
    assert "synthetic surfaces, 64x64" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 8
    for link in links:
        assert not link.startswith("/") and (out / link).is_file(), link
    # the FPGA stage that diverged is named with its first divergent node
    assert re.search(r"\| hw_codegen \| \*\*99\.50%\*\* \| 0\.25 \| MVAU_2 \(MVAU_hls\) in stage hw_codegen: integer output differs \|", md)


def test_html_is_self_contained_and_marks_failures_red(full):
    report, out, paths = full
    page = paths["html"].read_text()
    assert external_refs(page) == []
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert page.count('src="data:image/png;base64,') == 8
    for m in report["models"].values():
        assert m["label"] in page
    for g in report["gates"]:
        assert g["gate"] in page and html.escape(g["message"]) in page
    n_fail = sum(not g["passed"] for g in report["gates"])
    assert page.count('<td class="fail">FAIL</td>') == n_fail
    assert page.count('<td class="pass">PASS</td>') == len(report["gates"]) - n_fail
    assert re.search(r"td\.fail[^{]*\{[^}]*color:\s*#b00020", page)
    assert "NPU not present: IR executed on CPU" in page


def test_external_refs_detector_catches_links():
    assert external_refs('<img src="https://x/y.png"><a href="plots/a.png">') == ["https://x/y.png", "plots/a.png"]
    assert external_refs('<style>body{background:url(http://x)}</style>') == ["http://x"]
    assert external_refs('<img src="data:image/png;base64,AAAA">') == []


def test_console_summary_lists_models_and_colours_gates():
    from rich.console import Console

    report = make_report()
    buf = io.StringIO()
    print_console_summary(report, Console(file=buf, width=220, force_terminal=True, color_system="standard"))
    text = buf.getvalue()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for m in report["models"].values():
        assert m["label"] in plain
    assert "FAIL" in plain and "PASS" in plain and "gates FAILED" in plain
    assert "\x1b[1;31mFAIL" in text  # bold red


# ---------------------------------------------------------------------------- partial reports


def test_minimal_report_float_and_qat_only(tmp_path):
    report = make_report(keys=("float", "qat"), fpga=False, bench=False)
    assert [g["kind"] for g in report["gates"]] == ["quality"]  # the golden model: better than chance
    paths = render_report(report, tmp_path)
    assert set(paths) == {"md", "html", "confusion", "roc", "pr", "agreement"}
    md = paths["md"].read_text()
    assert "FPGA: not built." in md and "NPU: not built." in md and "GPU: not built." in md
    assert "Benchmark: not run" in md and "Parity: none checked" in md
    assert "Float (PyTorch)" in md and "QAT W4A4 (Brevitas)" in md
    assert external_refs(paths["html"].read_text()) == []


def test_fpga_only_report_without_bench(tmp_path):
    report = make_report(keys=("float", "qat", "fpga"), bench=False)
    paths = render_report(report, tmp_path)
    assert {"fpga_resources", "fpga_cycles", "fpga_stages"} <= set(paths) and "throughput" not in paths
    md = paths["md"].read_text()
    assert "FPGA (FINN dataflow, python exec)" in md and "NPU: not built." in md and "Benchmark: not run" in md
    assert "Parity: PASS" in md and "Quality: PASS" in md and "FAIL" not in md


def test_fpga_model_without_fpga_details(tmp_path):
    report = make_report(keys=("float", "qat", "fpga"), fpga=False, bench=False)
    md = render_report(report, tmp_path)["md"].read_text()
    assert "FPGA build details (resources, folding, per-layer): not built." in md


def test_report_without_ok_class_has_no_curves(tmp_path):
    neu = ["crazing", "inclusion", "patches", "pitted", "rolled-in", "scratches"]
    report = make_report(keys=("float", "qat", "fpga"), ok_index=None, classes=neu, fpga=False, bench=False)
    assert all(m["curves"] is None for m in report["models"].values())
    paths = render_report(report, tmp_path)
    assert "roc" not in paths and "pr" not in paths and "confusion" in paths
    md = paths["md"].read_text()
    assert "no ok class" in md and "AUROC" in md


def test_rerender_removes_plots_whose_data_is_gone(tmp_path):
    render_report(make_report(keys=("float", "qat"), fpga=False), tmp_path)
    assert (tmp_path / "plots" / "throughput.png").is_file()
    (tmp_path / "plots" / "training.png").write_bytes(b"not ours")
    render_report(make_report(keys=("float", "qat"), fpga=False, bench=False), tmp_path)
    left = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert left == ["agreement.png", "confusion.png", "pr.png", "roc.png", "training.png"]


def test_report_without_models_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no models"):
        render_report({"schema": "qdeploy.report/1", "models": {}}, tmp_path)


def test_a_chance_level_model_never_reads_pass(tmp_path):
    """Bit-exact twins of a model that finds no defect: parity PASS, quality FAIL, and the
    headline says so (the quality gate reads the real metrics of random logits)."""
    rng = np.random.default_rng(3)
    labels = np.array([0] * 300 + [1] * 100)
    chance = rng.normal(size=(400, 2))
    from reference.gates import evaluate_gates

    models = {}
    for key, role, target, ref in (("float", "golden", None, None), ("qat", "qat", "fpga", None),
                                   ("fpga", "target", "fpga", "qat")):
        models[key] = {"label": key, "role": role, "target": target, "reference": ref,
                       "metrics": metrics.evaluate(chance, labels, 0, 0.5),
                       "agreement_reference": metrics.agreement(chance, chance) if ref else None, "extra": {}}
    gates = evaluate_gates(models, GateConfig())
    quality = {g["target"]: g for g in gates if g["kind"] == "quality"}
    assert set(quality) == {"float", "fpga"} and not any(g["passed"] for g in quality.values())
    assert all(g["passed"] for g in gates if g["kind"] == "parity")
    report = {"schema": "qdeploy.report/1", "recipe": "chance", "models": models, "gates": gates}
    md = render_report(report, tmp_path)["md"].read_text()
    assert "Quality: FAIL" in md and "Parity: PASS" in md and "not above chance" in md


def test_quality_floors_from_the_recipe():
    from reference.gates import quality_gates

    good = {"label": "m", "metrics": {"auroc": 0.97, "auroc_lower95": 0.95, "ap": 0.90}}
    names = lambda gs: {g["gate"]: g["passed"] for g in gs}  # noqa: E731
    assert names(quality_gates("m", good, GateConfig())) == {"better_than_chance": True}
    assert names(quality_gates("m", good, GateConfig(min_auroc=0.98, min_ap=0.9))) == \
        {"better_than_chance": True, "min_auroc": False, "min_ap": True}
    six = {"label": "neu", "metrics": {"accuracy": 0.99, "accuracy_lower95": 0.97, "accuracy_chance": 1 / 6}}
    assert names(quality_gates("neu", six, GateConfig())) == {"better_than_chance": True}
    assert names(quality_gates("neu", six, GateConfig(min_auroc=0.9))) == {"better_than_chance": True, "min_auroc": False}


def test_quality_off_is_not_a_pass(tmp_path):
    report = make_report(keys=("float", "qat", "fpga"), fpga=False, bench=False)
    from reference.gates import evaluate_gates

    report["gates"] = evaluate_gates(report["models"], GateConfig(check_quality=False))
    assert report["gates"] and all(g["kind"] == "parity" for g in report["gates"])
    md = render_report(report, tmp_path)["md"].read_text()
    assert "Quality: none checked (gates.check_quality is false)" in md and "Quality: PASS" not in md
