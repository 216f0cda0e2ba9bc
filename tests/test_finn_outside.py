"""Models from outside qdeploy (tests/finn_outside_models.py: brevitas's own export_qonnx, no
cleanup) through `qdeploy build --target fpga --model M.onnx --samples DIR`, and the pieces
that made them work: batched execution of 1-bit weights, sample reading of any channel
count, folding FINN can generate code for, the SetFolding comparison, the preflight."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus import assert_user_error, run

import finn_outside_models as M
from core.errors import UserError

PART = "zcu104"


def _exported(tmp_path: Path, cls, dynamo: bool, **kw):
    model = M.build(cls, **kw)
    path = M.export(model, kw["channels"], kw["size"], tmp_path / f"{cls.__name__}.onnx", dynamo)
    return path, model


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


def _samples_dir(tmp_path: Path, pixels: np.ndarray) -> Path:
    """One PNG per sample (grayscale or RGB), as a user's folder of images."""
    from PIL import Image

    folder = tmp_path / "samples"
    folder.mkdir()
    for i, x in enumerate(pixels):
        img = Image.fromarray(x[0]) if x.shape[0] == 1 else Image.fromarray(x.transpose(1, 2, 0), "RGB")
        img.save(folder / f"s{i:03d}.png")
    return folder


# ---------------------------------------------------------------- 1-bit weights, batched


def test_bipolar_weights_run_once_per_batch_not_per_sample(tmp_path):
    """BipolarQuant of 1-bit weights reads no batched tensor: it runs once (it used to run per
    sample and be concatenated: [N*64, 784] weights, an onnxruntime shape error)."""
    from compilers.finn.execute import Executor, run_finn_reference
    from compilers.finn.flow import tidy_input

    path, model = _exported(tmp_path, M.MLP, dynamo=False, channels=1, size=28, wbits=1, abits=1)
    graph = tidy_input(_load(path))
    assert graph.get_nodes_by_op_type("BipolarQuant")  # 1-bit weights and activations
    pixels = M.images(5, 1, 28, seed=2)
    x = pixels.astype(np.float32) / 255
    ours = Executor(graph).run({graph.graph.input[0].name: x})[graph.graph.output[0].name]
    theirs = np.concatenate([run_finn_reference(graph, x[i : i + 1])[graph.graph.output[0].name] for i in range(5)])
    assert ours.shape == (5, 4)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours, M.logits(model, pixels), rtol=0, atol=1e-4)
    assert len({tuple(row) for row in ours}) == 5  # every sample gives its own logits


# ---------------------------------------------------------------- both exporters


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_both_brevitas_exporters_are_tidied_before_the_flow(tmp_path, dynamo):
    """Brevitas's dynamo export writes its weights as external data and leaves shapes unspecified;
    after tidy_input every tensor has a shape and the graph computes the Brevitas model."""
    from compilers.finn.execute import Executor
    from compilers.finn.flow import tidy_input

    path, model = _exported(tmp_path, M.VGG, dynamo=dynamo, channels=3, size=12, wbits=2, abits=2)
    assert Path(str(path) + ".data").is_file() == dynamo
    graph = tidy_input(_load(path))
    missing = [t for n in graph.graph.node for t in n.output if graph.get_tensor_shape(t) is None]
    assert not missing
    pixels = M.images(4, 3, 12, seed=3)
    out = Executor(graph).run({graph.graph.input[0].name: pixels.astype(np.float32) / 255})
    np.testing.assert_allclose(out[graph.graph.output[0].name], M.logits(model, pixels), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- samples


def test_samples_of_any_channel_count(tmp_path):
    from qdeploy.samples import read_samples

    rgb = M.images(3, 3, 8, seed=1)
    folder = _samples_dir(tmp_path, rgb)
    np.testing.assert_array_equal(read_samples(folder, (3, 8, 8)), rgb)
    five = M.images(4, 5, 8, seed=2)
    np.save(tmp_path / "five.npy", five)
    np.testing.assert_array_equal(read_samples(tmp_path / "five.npy", (5, 8, 8)), five)
    np.save(tmp_path / "last.npy", five.transpose(0, 2, 3, 1))  # channels-last
    np.testing.assert_array_equal(read_samples(tmp_path / "last.npy", (5, 8, 8)), five)
    with pytest.raises(UserError, match=r"5 input channels.*\.npy arrays \[N, 5, 8, 8\]"):
        read_samples(folder, (5, 8, 8))
    with pytest.raises(UserError, match="is 8x8 but the model takes 16x16.*--resize"):
        read_samples(folder, (3, 16, 16))
    assert read_samples(folder, (3, 16, 16), resize=True).shape == (3, 3, 16, 16)
    np.save(tmp_path / "float.npy", five.astype(np.float32))
    with pytest.raises(UserError, match="float32 values; samples are uint8"):
        read_samples(tmp_path / "float.npy", (5, 8, 8))


# ---------------------------------------------------------------- folding FINN can generate


def _specialized(tmp_path, cls, **kw):
    """The model after specialize_layers (FINN's own steps up to folding)."""
    from compilers.finn import steps as S
    from compilers.finn.env import finn_build_dir
    from compilers.finn.flow import STEPS, run_steps, tidy_input
    from targets.fpga_parts import get_part

    path, _ = _exported(tmp_path, cls, dynamo=False, **kw)
    cfg = S.FlowConfig(tmp_path / "flow", get_part(PART), 200.0, 10000.0, 0.7)
    cfg.intermediate_dir.mkdir(parents=True)
    upto = [s for s in STEPS[: [s.__name__ for s in STEPS].index("specialize_layers") + 1]]
    with finn_build_dir(cfg.finn_tmp):
        model, _ = run_steps(tidy_input(_load(path)), cfg, upto, log=lambda s: None)
    return model, cfg


def test_sliding_window_choices_are_ones_finn_generates_code_for(tmp_path):
    """The VGG net's last conv reads a 3x3 map with a 3x3 kernel (1x1 output). FINN's RTL
    sliding window has no parallel-window code for that (math domain error in
    prepare_codegen_parallel): every choice the folding offers generates HDL with FINN's
    own generate_hdl, and the one it must not offer fails there."""
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.custom_op.registry import getCustomOp

    from compilers.finn import fold_space as fs
    from compilers.finn.env import finn_build_dir
    from targets.fpga_parts import get_part

    model, cfg = _specialized(tmp_path, M.VGG, channels=3, size=12, wbits=2, abits=2)
    model = model.transform(GiveUniqueNodeNames())
    swgs = [n for n in model.graph.node if n.op_type == "ConvolutionInputGenerator_rtl"
            and getCustomOp(n).get_nodeattr("OFMDim") == [1, 1]]
    assert len(swgs) == 1
    node = swgs[0]
    channels = getCustomOp(node).get_nodeattr("IFMChannels")
    table = fs.unit_table(model, fs.Unit((node.name,), "ConvolutionInputGenerator"), get_part(PART))
    offered = [dict(a[0]) for a in table.attrs]
    assert offered and all(a.get("parallel_window") == 0 for a in offered)

    def codegen(attrs):
        inst = getCustomOp(node)
        for k, v in attrs.items():
            inst.set_nodeattr(k, v)
        with finn_build_dir(cfg.finn_tmp):
            inst.set_nodeattr("code_gen_dir_ipgen", str(tmp_path / "hdl"))
            (tmp_path / "hdl").mkdir(exist_ok=True)
            inst.generate_hdl(model, get_part(PART).fpga_part, 5.0)

    for attrs in offered:
        codegen(attrs)
    with pytest.raises(ValueError, match="math domain error"):
        codegen({"SIMD": channels, "parallel_window": 1, "ram_style": "distributed"})


def test_setfolding_comparison_is_a_fresh_setfolding_of_the_unfolded_model(tmp_path):
    """The flow's comparison equals FINN's SetFolding run by hand on the specialize_layers
    model (before our folding), priced with FINN's own analyses."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
    from finn.transformation.fpgadataflow.set_folding import SetFolding

    from compilers.finn import lower
    from compilers.finn.folding import fold
    from targets.fpga_parts import get_part

    path, model = _exported(tmp_path, M.VGG, dynamo=False, channels=3, size=12, wbits=2, abits=2)
    result = lower(path, tmp_path / "fpga", get_part(PART), 200.0, target_fps=10000, folding=fold, log=lambda s: None)
    reported = result.notes["folding"]["comparison"]["setfolding"]
    unfolded = _load(result.out_dir / "intermediate_models" / "specialize_layers.onnx")
    unfolded = unfolded.transform(SetFolding(200e6 // 10000, mvau_wwidth_max=36, two_pass_relaxation=True))
    res = unfolded.analysis(lambda m: res_estimation(m, get_part(PART).fpga_part))
    perf = unfolded.transform(AnnotateCycles()).analysis(dataflow_performance)
    assert reported["est_fps"] == pytest.approx(200e6 / perf["max_cycles"])
    assert reported["LUT"] - reported["dwc_luts"] == pytest.approx(sum(r["LUT"] for r in res.values()))
    assert reported["BRAM_18K"] == pytest.approx(sum(r["BRAM_18K"] for r in res.values()))
    # and our own folding's resources differ from it: the comparison did not read our folded model
    assert result.notes["folding"]["plan"]["resources"] != {k: reported[k] for k in ("LUT", "BRAM_18K", "URAM", "DSP")}


# ---------------------------------------------------------------- through the CLI

MATRIX = {
    # name: (model class, build kwargs, exporter)
    "vgg-w1a1": (M.VGG, dict(channels=3, size=14, wbits=1, abits=1, pad=0), True),
    "vgg-w2a2": (M.VGG, dict(channels=3, size=12, wbits=2, abits=2), False),
    "mlp-w1a1": (M.MLP, dict(channels=1, size=28, wbits=1, abits=1), True),
    "resnet-w4a4": (M.ResNet, dict(channels=3, size=8, wbits=4, abits=4, width=4), False),
    # per-channel activation scales in front of the depthwise convs (moved past them, absorbed)
    "mobilenet-w4a4-per-channel": (M.MobileNet, dict(channels=3, size=8, wbits=4, abits=4, width=4, per_channel="dw"),
                                   True),
}


def _cli_build(tmp_path, capsys, path, samples, *extra):
    return run(capsys, "build", "--target", "fpga", "--model", str(path), "--samples", str(samples),
               "--build-dir", str(tmp_path / "build"), "--set", "fpga.target_fps=2000", *extra)


@pytest.mark.parametrize("name", list(MATRIX))
def test_outside_model_lowers_through_the_cli_bit_exact(tmp_path, capsys, name):
    cls, kw, dynamo = MATRIX[name]
    path, model = _exported(tmp_path, cls, dynamo, **kw)
    pixels = M.images(32, kw["channels"], kw["size"], seed=11)
    code, err = _cli_build(tmp_path, capsys, path, _samples_dir(tmp_path, pixels))
    assert code == 0, err[-3000:]
    out = capsys.readouterr()
    summary = json.loads((tmp_path / "build" / "default" / "fpga-byom" / cls.__name__ / "byom_summary.json").read_text())
    assert summary["bit_exact"] and len(summary["stages"]) == 14
    assert all(p["n"] == 32 and p["exact"] for p in summary["parity"])
    assert summary["notes"]["folding"]["comparison"]["setfolding"]["est_fps"] > 0
    # the reference (the QONNX graph) is the Brevitas model
    from compilers.finn.flow import qonnx_reference, tidy_input

    ref = qonnx_reference(tidy_input(_load(path)), pixels)
    np.testing.assert_allclose(ref, M.logits(model, pixels), rtol=0, atol=1e-4)
    assert len({tuple(row) for row in ref}) >= 8  # the samples give different logits (1-bit nets: coarse ones)
    assert "Traceback" not in out.err


FULL = {
    "cnv-w1a1-32": (M.VGG, dict(channels=3, size=32, wbits=1, abits=1, pad=0, width=16), True, 1000),
    "cnv-w2a2-32": (M.VGG, dict(channels=3, size=32, wbits=2, abits=2, pad=0, width=16), False, 1000),
    "mlp-w1a1-28": (M.MLP, dict(channels=1, size=28, wbits=1, abits=1, width=256), True, 10000),
    "mobilenet-w4a4-64": (M.MobileNet, dict(channels=3, size=64, wbits=4, abits=4, width=16, per_channel="dw"), True,
                          1000),
    "resnet-w4a4-32": (M.ResNet, dict(channels=3, size=32, wbits=4, abits=4, width=16), False, 1000),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_full_size_outside_model_lowers_through_the_cli_bit_exact(tmp_path, capsys, name):
    cls, kw, dynamo, fps = FULL[name]
    path, _ = _exported(tmp_path, cls, dynamo, **kw)
    pixels = M.images(64, kw["channels"], kw["size"], seed=12)
    code, err = _cli_build(tmp_path, capsys, path, _samples_dir(tmp_path, pixels), "--set", f"fpga.target_fps={fps}")
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "build" / "default" / "fpga-byom" / cls.__name__ / "byom_summary.json").read_text())
    assert summary["bit_exact"] and all(p["n"] == 64 and p["exact"] for p in summary["parity"])
    assert summary["est_fps"] >= fps


def test_padded_bipolar_conv_stops_before_the_flow_naming_layer_and_rule(tmp_path, capsys):
    path, _ = _exported(tmp_path, M.VGG, True, channels=3, size=12, wbits=1, abits=1)
    samples = _samples_dir(tmp_path, M.images(4, 3, 12))
    code, err = _cli_build(tmp_path, capsys, path, samples)
    assert_user_error(code, err, ("layer 'body.3'", "[bipolar-padding]", "padding=0"))
    assert not list((tmp_path / "build").rglob("intermediate_models"))


def test_per_channel_scale_in_front_of_a_pointwise_conv_stops_before_the_flow(tmp_path, capsys):
    path, _ = _exported(tmp_path, M.MobileNet, True, channels=3, size=8, width=4, per_channel="all")
    samples = tmp_path / "samples.npy"
    np.save(samples, M.images(4, 3, 8))
    code, err = _cli_build(tmp_path, capsys, path, samples)
    assert_user_error(code, err, ("layer 'body.6'", "Conv", "[channel-scale]", "'body.5'", "per tensor"))
    assert not list((tmp_path / "build").rglob("intermediate_models"))


def test_a_scale_streamlining_left_is_named_at_partitioning(tmp_path, monkeypatch):
    """The backstop behind the preflight: were the per-channel scales in front of the depthwise
    convs not moved, the partition step names the conv and the scale (not 'has no hardware layer')."""
    from compilers.finn import lower
    from compilers.finn import steps as S
    from targets.fpga_parts import get_part

    monkeypatch.setattr(S, "move_channel_scales_past_depthwise", lambda model: (model, []))
    path, _ = _exported(tmp_path, M.MobileNet, False, channels=3, size=8, width=4, per_channel="dw")
    with pytest.raises(UserError, match=r"node MatMul_\d+ \(MatMul\) reads a float tensor produced by (Elementwise)?Mul_\d+ "
                                        r"\((Elementwise)?Mul, a per-channel scale\) that streamlining could not absorb"):
        lower(path, tmp_path / "fpga", get_part(PART), 200.0, target_fps=1000, log=lambda s: None)


# ---------------------------------------------------------------- folding against SetFolding


def _ours_and_setfolding_at_three_targets(tmp_path, cls, kw):
    """At a tenth, a third and all of our fastest fit: ours reaches every target (and FINN
    generates its code), with a binding share no larger than SetFolding's wherever SetFolding
    also reaches it; where SetFolding misses, ours is still at the target."""
    import copy
    import math

    from compilers.finn.env import finn_build_dir
    from compilers.finn.folding import FoldingInfeasible, finn_setfolding, fold
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from targets.fpga_parts import get_part

    model, _ = _specialized(tmp_path, cls, **kw)
    part = get_part(PART)
    try:
        fastest = fold(copy.deepcopy(model), part, 200.0, 1e9).est_fps
    except FoldingInfeasible as e:
        fastest = e.best_fps
    rows = []
    for t in sorted({math.floor(fastest / 10), math.floor(fastest / 3), math.floor(fastest)}):
        folded = copy.deepcopy(model)
        ours = fold(folded, part, 200.0, t)
        finn = finn_setfolding(model, part, 200.0, t)
        assert ours.fits and ours.est_fps >= t
        if finn.fits and finn.est_fps >= t:
            assert ours.binding[1] <= finn.binding[1] + 1e-9, (t, ours.summary(), finn.summary())
        with finn_build_dir(tmp_path / f"codegen{t}"):  # FINN generates the code of the design we show
            folded.transform(InsertDWC()).transform(SpecializeLayers(part.fpga_part)).transform(
                PrepareIP(part.fpga_part, 5.0))
        rows.append((t, ours.summary(), finn.summary()))
    return rows


@pytest.mark.parametrize("name", list(MATRIX))
def test_our_folding_beats_setfolding_at_three_targets(tmp_path, name):
    cls, kw, _ = MATRIX[name]
    rows = _ours_and_setfolding_at_three_targets(tmp_path, cls, kw)
    assert len(rows) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FULL))
def test_our_folding_beats_setfolding_at_three_targets_full_size(tmp_path, name):
    cls, kw, _, _ = FULL[name]
    rows = _ours_and_setfolding_at_three_targets(tmp_path, cls, kw)
    assert len(rows) == 3


def test_a_target_beyond_the_budget_builds_the_best_fit_with_a_warning_or_is_refused(tmp_path, capsys):
    """fpga.if_infeasible: best_fit (default) builds the fastest design within the budget and
    says why the target was not met; refuse stops in one line naming the resource."""
    cls, kw, dynamo = MATRIX["mlp-w1a1"]
    path, _ = _exported(tmp_path, cls, dynamo, **kw)
    samples = _samples_dir(tmp_path, M.images(32, kw["channels"], kw["size"], seed=11))
    tight = ("--set", "fpga.part=pynq-z1", "--set", "fpga.budget=0.05", "--set", "fpga.target_fps=200000")
    code, err = _cli_build(tmp_path, capsys, path, samples, *tight)
    out = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "build" / "default" / "fpga-byom" / cls.__name__ / "byom_summary.json").read_text())
    plan = summary["notes"]["folding"]["plan"]
    assert summary["bit_exact"] and plan["target_fps"] == 200000 and plan["est_fps"] < 200000
    assert "does not fit pynq-z1 within 5% of" in plan["shortfall"] and "best fit:" in plan["shortfall"]
    assert "fpga.target_fps not met" in out.out + out.err + err
    code, err = _cli_build(tmp_path, capsys, path, samples, *tight, "--set", "fpga.if_infeasible=refuse",
                           "--build-dir", str(tmp_path / "refused"))
    assert_user_error(code, err, ("does not fit pynq-z1 within 5% of", "best fit:"))
