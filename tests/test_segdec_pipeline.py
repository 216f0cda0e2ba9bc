"""A localising recipe end to end on a small non-square synthetic strip: the two-output model
(decision + defect map) trained with the masks, built for the FPGA with both outputs
bit-exact at every FINN stage and in the report, its map scored against the masks, and
`predict` writing the map as RLE from the FPGA's integer execution."""
import csv
import json

import numpy as np
import pytest

from qdeploy.cli import main

SEG = [
    "--set", "name=segstrip", "--set", "dataset.size=[32, 96]", "--set", "dataset.num_images=160",
    "--set", "dataset.difficulty=0.0", "--set", "dataset.defect_fraction=0.4",
    "--set", "model.name=segdec", "--set", "model.width=0.25",
    "--set", "train.crop_steps=20", "--set", "train.crop_size=32", "--set", "train.float_steps=40",
    "--set", "train.qat_steps=20", "--set", "train.batch_size=8", "--set", "train.eval_every=20",
    "--set", "train.ema=0.9", "--set", "train.qat_ema=0.9",  # the kept states are weight averages
    "--set", "fpga.target_fps=2000.0", "--set", "fpga.parity_images=8",
    "--set", "gates.check_quality=false",  # a model trained 60 steps: parity is what this checks
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    build = tmp_path_factory.mktemp("segbuild")
    assert main(["build", "--target", "fpga", "--build-dir", str(build), *SEG]) == 0
    return build, build / "segstrip"


def test_training_scores_the_map_against_the_masks(built):
    _, root = built
    m = json.loads((root / "train" / "metrics.json").read_text())
    for key in ("float", "qat"):
        pixel = m[key]["pixel"]["test"]
        assert pixel["n_masks"] == m[key]["test"]["n"]  # the synthetic generator masks every image
        assert 0 <= pixel["dice"] <= 1 and pixel["regions"] > 0
    qat = json.loads((root / "train" / "qat.json").read_text())
    assert qat["history"]["kept_step"] >= 10  # the kept state is from the second half of the steps


def test_both_outputs_are_bit_exact_at_every_stage_and_in_the_parity_report(built):
    _, root = built
    summary = json.loads((root / "fpga" / "fpga_summary.json").read_text())
    assert summary["bit_exact"] and summary["stages"]
    assert all(len(s["outputs"]) == 2 and all(o["exact"] for o in s["outputs"]) for s in summary["stages"])
    parity = json.loads((root / "fpga" / "parity.json").read_text())
    fpga = parity["models"]["fpga"]
    assert fpga["map_agreement"]["max_abs_diff_rel"] <= 1e-6 and fpga["map_agreement"]["n"] == fpga["agreement_reference"]["n"]
    assert fpga["pixel"] == parity["models"]["qat"]["pixel"]  # the same map, so the same Dice
    gates = {g["gate"]: g["passed"] for g in parity["gates"] if g["target"] == "fpga"}
    assert gates["map_bit_exact_max_abs_diff_rel"] and gates["bit_exact_max_abs_diff_rel"]


def test_predict_writes_the_fpga_map_as_rle(built, tmp_path):
    """The RLE of each image is the QAT model's own map > 0 (the FPGA is bit-exact to it)."""
    from quant.checkpoint import load_checkpoint
    from quant.data.images import read_gray
    from quant.data.rle import rle_decode
    from quant.train_seg import predict_maps, upsample

    build, root = built
    images = sorted((build / "_data").glob("synthetic-*/*/*.png"))[-6:]  # class folders (masks/ is deeper)
    for p in images:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert main(["predict", "--target", "fpga", "--build-dir", str(build), *SEG, str(tmp_path), "--out", str(out)]) == 0
    rows = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert len(rows) == len(images) and "RLE" in json.loads((out / "predictions.json").read_text())["mask_rle"]
    model, _ = load_checkpoint(root / "train" / "qat")
    pixels = np.stack([read_gray(p) for p in images])[:, None]  # generated at the input size: fit is the identity
    assert pixels.shape[2:] == (32, 96)
    _, maps = predict_maps(model, pixels, float64=True)
    expected = upsample(maps, (32, 96))[:, 0] > 0
    for p, want in zip(images, expected):
        assert np.array_equal(rle_decode(rows[p.name]["mask_rle"], (32, 96)), want), p.name


def test_the_efficientnet_lite_encoder_lowers_both_outputs_bit_exact(tmp_path):
    """segdec_lite (inverted residuals, depthwise convs, ReLU6) trains with the masks and
    builds for the FPGA with both outputs bit-exact at every stage, depthwise layers in hardware."""
    from qonnx.core.modelwrapper import ModelWrapper

    lite = [a.replace("model.name=segdec", "model.name=segdec_lite") for a in SEG]
    assert main(["build", "--target", "fpga", "--build-dir", str(tmp_path), *lite]) == 0
    root = tmp_path / "segstrip"
    summary = json.loads((root / "fpga" / "fpga_summary.json").read_text())
    assert summary["bit_exact"] and len(summary["stages"]) == 14
    assert all(len(s["outputs"]) == 2 and all(o["exact"] for o in s["outputs"]) for s in summary["stages"])
    final = root / "fpga" / "intermediate_models" / "hw_codegen.onnx"
    parent = ModelWrapper(str(root / "fpga" / "intermediate_models" / "dataflow_parent.onnx"))
    assert [n.op_type for n in parent.graph.node].count("StreamingDataflowPartition") == 1
    kinds = {n.op_type for n in ModelWrapper(str(final)).graph.node}
    assert kinds & {"VVAU_hls", "VVAU_rtl"} and "ElementwiseAdd_hls" in kinds
    m = json.loads((root / "train" / "metrics.json").read_text())
    assert m["qat"]["pixel"]["test"]["n_masks"] == m["qat"]["test"]["n"]
