"""compilers.finn.folding on real FINN graphs: small W4A4 Brevitas CNNs taken through FINN's
steps up to specialize_layers (the point where the FINN flow calls `fold`)."""
import copy

import numpy as np

import pytest
import torch
from torch import nn

from core.errors import UserError
from compilers.finn import fold_space as fs
from compilers.finn.folding import FoldingInfeasible, apply_folding, finn_setfolding, fold, fold_best_fit, pareto
from targets.fpga_parts import get_part

PART, CLOCK = get_part("zcu104"), 200.0


# ---------------------------------------------------------------- test graphs


def _brevitas_cnn(size=64, channels=(16, 32, 64), residual=False, depthwise=False):
    """W4A4 CNN in the shape the FINN notes say lowers fully: 8-bit input quantizer,
    conv(bias=False)-BN-QuantReLU blocks, TruncAvgPool global pool, QuantLinear head;
    `residual` adds one identity-shortcut block after the stem, `depthwise` a
    depthwise-separable block (3x3 groups=C, then 1x1)."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerTensorFloat, TruncTo8bit

    class W4(Int8WeightPerTensorFloat):
        bit_width = 4

    def conv(cin, cout, stride, k=3, groups=1):
        return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                               weight_quant=W4)

    def block(cin, cout, stride, k=3, groups=1):
        return [conv(cin, cout, stride, k, groups), nn.BatchNorm2d(cout),
                qnn.QuantReLU(bit_width=4, return_quant_tensor=True)]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)], 1
            for c in channels:
                layers += block(cin, c, 2)
                cin = c
            if depthwise:
                layers += block(cin, cin, 1, groups=cin) + block(cin, 2 * cin, 1, k=1)
                cin = 2 * cin
            self.body = nn.Sequential(*layers)
            if residual:
                self.branch = nn.Sequential(*block(cin, cin, 1), conv(cin, cin, 1), nn.BatchNorm2d(cin))
                self.join = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)  # both operands
                self.relu = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            k = size // 2 ** len(channels)
            self.pool = qnn.TruncAvgPool2d(kernel_size=k, stride=k, trunc_quant=TruncTo8bit,
                                           return_quant_tensor=True)
            self.head = qnn.QuantLinear(cin, 2, bias=False, weight_quant=W4)

        def forward(self, x):
            x = self.body(x)
            if residual:
                x = self.relu(self.join(x) + self.join(self.branch(x)))
            return self.head(self.pool(x).flatten(1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial BatchNorm statistics, deterministic
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def finn_hw_graph(net, size, workdir, residual=False):
    """Brevitas -> QONNX -> FINN steps up to specialize_layers; returns the dataflow child."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper

    from compilers.finn.env import ensure_finn, finn_build_dir

    ensure_finn()
    import finn.builder.build_dataflow_steps as steps
    from finn.builder.build_dataflow_config import DataflowBuildConfig
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds

    with finn_build_dir(workdir / "finn"):
        export_qonnx(net, torch.rand(1, 1, size, size), str(workdir / "net.onnx"))
        model = ModelWrapper(str(workdir / "net.onnx"))
        cfg = DataflowBuildConfig(output_dir=str(workdir / "out"), synth_clk_period_ns=1e3 / CLOCK,
                                  fpga_part=PART.fpga_part, generate_outputs=[])
        if residual:
            from finn.builder.custom_step_library.resnet import step_resnet_streamline as streamline
        else:
            streamline = steps.step_streamline
        for step in (steps.step_qonnx_to_finn, steps.step_tidy_up, streamline, steps.step_convert_to_hw):
            model = step(model, cfg)
        model = model.transform(RoundAndClipThresholds())  # see ../shared/notes/fpga-finn.md
        model = steps.step_create_dataflow_partition(model, cfg)
        return steps.step_specialize_layers(model, cfg)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return finn_hw_graph(_brevitas_cnn(), 64, tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def dwcnn(tmp_path_factory):
    return finn_hw_graph(_brevitas_cnn(32, (16,), depthwise=True), 32, tmp_path_factory.mktemp("dwcnn"))


# ---------------------------------------------------------------- checks against FINN


def _finn_view(model, fpga_part):
    """FINN's own analyses of a folded model: slowest layer's cycles and summed estimates."""
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles

    perf = model.transform(AnnotateCycles()).analysis(dataflow_performance)
    res = model.analysis(lambda m: res_estimation(m, fpga_part))
    totals = {r: sum(v[r] for v in res.values()) for r in ("LUT", "BRAM_18K", "URAM", "DSP")}
    return perf["max_cycles"], perf["max_cycles_node_name"], totals


def _check_result(model, result, target_fps, clock=CLOCK):
    """The result is what FINN says about the model as folded, meets the target, fits."""
    max_cycles, slowest, finn_totals = _finn_view(model, result.fpga_part)
    assert result.max_cycles == max_cycles and result.bottleneck == slowest
    assert result.est_fps == pytest.approx(clock * 1e6 / max_cycles)
    assert result.est_fps >= 0.95 * target_fps and result.achieved >= 0.95
    expected = dict(finn_totals, LUT=finn_totals["LUT"] + result.dwc_luts)
    assert result.resources == expected
    limits = {r: result.budget * c for r, c in get_part(result.part).capacity().items()}
    assert result.limits == limits and result.fits
    assert all(result.resources[r] <= limits[r] for r in limits)
    from qonnx.custom_op.registry import getCustomOp

    for name, attrs in result.config.items():  # the config is on the model
        if name != "Defaults":
            node = model.get_node_from_name(name)
            attrs = dict(attrs)
            assert node.op_type == attrs.pop(fs.IMPL, node.op_type)  # a switched implementation is applied
            inst = getCustomOp(node)
            assert {k: inst.get_nodeattr(k) for k in attrs} == attrs


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("target", [1000, 5000, 20000, 40000])
def test_fold_reaches_the_target_within_budget(cnn, target):
    model = copy.deepcopy(cnn)
    result = fold(model, PART, CLOCK, target)
    _check_result(model, result, target)
    assert result.config["Defaults"] == {}
    report = result.to_report()
    assert report["per_layer"][0].keys() == {"name", "op_type", "cycles", "LUT", "BRAM_18K", "URAM", "DSP"}
    assert len(report["per_layer"]) == sum(1 for n in model.graph.node if n.op_type.endswith(("_hls", "_rtl")))


def test_more_fps_costs_more_and_unneeded_parallelism_is_not_bought(cnn):
    slow = fold(copy.deepcopy(cnn), PART, CLOCK, 1000)
    fast = fold(copy.deepcopy(cnn), PART, CLOCK, 20000)
    assert fast.resources["LUT"] > 2 * slow.resources["LUT"]
    # at 1000 fps (200,000 cycles per frame) the folding stays close to the target: the
    # stem MVAU fully folded (PE = SIMD = 1) already takes 147,456 cycles
    assert slow.est_fps < 1.4 * 1000
    # and no layer could be slower at no more of any resource and no wider streams
    for unit in fs.find_units(cnn):
        table = fs.unit_table(cnn, unit, get_part(slow.part))
        picked = tuple(dict(next(x for x in slow.per_layer if x.name == n).attrs) for n in unit.nodes)
        i = next(i for i, attrs in enumerate(table.attrs) if tuple(dict(a) for a in attrs) == picked)
        slower = (table.cycles > table.cycles[i]) & (table.cycles <= 200_000)
        assert not np.any(slower & np.all(table.res <= table.res[i], axis=1) & (table.width <= table.width[i])), unit


def test_folded_model_passes_finn_dwc_insertion_and_codegen(cnn, tmp_path):
    """FINN accepts every chosen folding: width converters go in and HLS/RTL code generates."""
    from compilers.finn.env import finn_build_dir
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    model = copy.deepcopy(cnn)
    result = fold(model, PART, CLOCK, 20000)
    with finn_build_dir(tmp_path):
        model = model.transform(InsertDWC()).transform(SpecializeLayers(result.fpga_part))
        model = model.transform(PrepareIP(result.fpga_part, 1e3 / CLOCK))
    dwcs = [getCustomOp(n) for n in model.graph.node if n.op_type.startswith("StreamingDataWidthConverter")]
    assert dwcs and sum(d.lut_estimation(result.fpga_part) for d in dwcs) == result.dwc_luts


@pytest.mark.parametrize("target", [1000, 100000])
def test_depthwise_generator_and_vvau_fold_together(dwcnn, target, tmp_path):
    from compilers.finn.env import finn_build_dir
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = copy.deepcopy(dwcnn)
    result = fold(model, PART, CLOCK, target)
    _check_result(model, result, target)
    vvau = next(n for n in model.graph.node if n.op_type.startswith("VVAU"))
    swg = model.find_producer(vvau.input[0])
    v, g = result.config[vvau.name], result.config[swg.name]
    assert swg.op_type.startswith("ConvolutionInputGenerator") and g["SIMD"] == v["PE"]
    assert g["parallel_window"] == int(v["SIMD"] > 1)
    if target == 100000:  # 32x32x16 depthwise 3x3 in 2,000 cycles: window parallelism needed
        assert v["PE"] == 16 and v["SIMD"] > 1
    with finn_build_dir(tmp_path):  # FINN generates the code for this folding
        model.transform(InsertDWC()).transform(SpecializeLayers(result.fpga_part)).transform(
            PrepareIP(result.fpga_part, 1e3 / CLOCK))


def test_beats_finn_setfolding_at_20000_fps(cnn):
    before = copy.deepcopy(cnn.model)
    ours = fold(copy.deepcopy(cnn), PART, CLOCK, 20000)
    finn = finn_setfolding(cnn, PART, CLOCK, 20000)
    assert cnn.model == before  # SetFolding ran on a copy
    assert ours.est_fps >= 20000
    limits = ours.limits
    share = lambda r: sum(r.resources[k] / limits[k] for k in limits if limits[k])  # noqa: E731
    if finn.est_fps >= 20000:  # when FINN also makes it, ours must not cost more
        assert share(ours) <= share(finn)
    assert finn.summary().keys() >= {"est_fps", "LUT", "BRAM_18K", "fits"}


def test_unreachable_target_names_the_layer_and_its_best_fit_folds(cnn):
    # 64x64 input, one channel: the first window generator needs >= 66*66 cycles per frame
    with pytest.raises(FoldingInfeasible) as e:
        fold(copy.deepcopy(cnn), PART, CLOCK, 50000)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg
    assert "target 50000 fps" in msg and "ConvolutionInputGenerator" in msg and "best fit:" in msg
    best = e.value.best_fps
    assert f"{best:,} fps" in msg and 40000 < best < 50000
    model = copy.deepcopy(cnn)
    _check_result(model, fold(model, PART, CLOCK, best), best)


def test_tight_lut_budget_is_met_by_moving_work_to_dsp_and_bram(cnn):
    roomy = fold(copy.deepcopy(cnn), get_part("pynq-z1"), 100.0, 20000, budget=0.7)
    model = copy.deepcopy(cnn)
    tight = fold(model, get_part("pynq-z1"), 100.0, 20000, budget=0.5)
    _check_result(model, tight, 20000, clock=100.0)
    assert tight.resources["LUT"] <= 0.5 * 53_200
    assert tight.resources["DSP"] > 0 and tight.resources["BRAM_18K"] > 0
    assert any(a.get("resType") == "dsp" for n, a in tight.config.items() if n.startswith("MVAU_hls"))
    # the objective (the largest share of any resource's budget) does not depend on the
    # budget's size: the same design, which fits both
    assert tight.config == roomy.config and tight.fits and roomy.fits


def test_target_over_budget_reports_resource_and_a_best_fit_that_folds(cnn):
    with pytest.raises(FoldingInfeasible) as e:
        fold(copy.deepcopy(cnn), get_part("pynq-z1"), 100.0, 20000, budget=0.2)
    msg = str(e.value)
    assert msg.startswith("target 20000 fps does not fit pynq-z1 within 20% of LUT (needs ")
    assert "of 10,640)" in msg and "best fit:" in msg and "\n" not in msg
    best = e.value.best_fps
    model = copy.deepcopy(cnn)
    result = fold(model, get_part("pynq-z1"), 100.0, best, budget=0.2)
    _check_result(model, result, best, clock=100.0)
    assert result.resources["LUT"] <= 0.2 * 53_200
    with pytest.raises(FoldingInfeasible):  # the best fit is the boundary, not a guess
        fold(copy.deepcopy(cnn), get_part("pynq-z1"), 100.0, int(best * 1.02), budget=0.2)


def test_best_fit_builds_the_fastest_design_that_fits_and_says_why_the_target_was_not(cnn):
    part = get_part("pynq-z1")
    with pytest.raises(FoldingInfeasible) as e:
        fold(copy.deepcopy(cnn), part, 100.0, 20000, budget=0.2)
    model = copy.deepcopy(cnn)
    result = fold_best_fit(model, part, 100.0, 20000, budget=0.2)
    assert result.shortfall == str(e.value) and result.target_fps == 20000
    assert result.est_fps >= e.value.best_fps and result.est_fps < 20000 and result.fits
    report = result.to_report()
    assert report["shortfall"] == str(e.value) and report["target_fps"] == 20000
    assert result.config == fold(copy.deepcopy(cnn), part, 100.0, e.value.best_fps, budget=0.2).config
    # a target that fits is folded as by fold, with no shortfall
    fits = fold_best_fit(copy.deepcopy(cnn), part, 100.0, 2000, budget=0.2)
    assert fits.shortfall is None and "shortfall" not in fits.to_report()
    assert fits.config == fold(copy.deepcopy(cnn), part, 100.0, 2000, budget=0.2).config
    with pytest.raises(FoldingInfeasible):  # nothing fits: refused, not a design
        fold_best_fit(copy.deepcopy(cnn), part, 100.0, 10, budget=0.01)


def test_model_too_big_for_any_folding(cnn):
    with pytest.raises(FoldingInfeasible) as e:
        fold(copy.deepcopy(cnn), get_part("pynq-z1"), 100.0, 10, budget=0.01)
    assert "does not fit even fully folded" in str(e.value) and e.value.best_fps is None


def test_deterministic(cnn):
    from compilers.finn import fold_space

    fold_space._TABLES.clear()
    first = fold(copy.deepcopy(cnn), get_part("kv260"), CLOCK, 10000)
    again = fold(copy.deepcopy(cnn), get_part("kv260"), CLOCK, 10000)
    assert first == again


def test_default_clock_is_the_parts(cnn):
    result = fold(copy.deepcopy(cnn), get_part("pynq-z2"), None, 1000)
    assert result.clock_mhz == get_part("pynq-z2").default_clock_mhz == 100.0


def test_apply_folding_sets_a_config_in_place(cnn):
    model = copy.deepcopy(cnn)
    name = next(n.name for n in model.graph.node if n.op_type.startswith("MVAU"))
    assert apply_folding(model, {"Defaults": {}, name: {"PE": 2, "SIMD": 3}}) is model
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(model.get_node_from_name(name))
    assert (inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")) == (2, 3)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(target_fps=0), "fpga.target_fps must be positive"),
    (dict(budget=1.5), "fpga.budget must be in (0, 1]"),
    (dict(budget=0), "fpga.budget must be in (0, 1]"),
    (dict(clock_mhz=-5), "clock must be positive"),
])
def test_bad_arguments_are_user_errors(cnn, kwargs, needle):
    args = dict(part=PART, clock_mhz=CLOCK, target_fps=1000) | kwargs
    with pytest.raises(UserError) as e:
        fold(copy.deepcopy(cnn), **args)
    assert needle in str(e.value)


@pytest.mark.slow
def test_residual_cnn_folds_forks_and_joins(tmp_path):
    """StreamlinePlus graph with DuplicateStreams and ElementwiseAdd (about a minute)."""
    model = finn_hw_graph(_brevitas_cnn(size=32, channels=(16,), residual=True), 32, tmp_path, residual=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"DuplicateStreams_hls", "ElementwiseAdd_hls"} <= ops
    for target in (1000, 20000):
        folded = copy.deepcopy(model)
        result = fold(folded, PART, CLOCK, target)
        _check_result(folded, result, target)
        for name in ("DuplicateStreams_hls_0", "ElementwiseAdd_hls_0"):
            assert "PE" in result.config[name]


def test_beyond_one_pipeline_data_parallel_instances_reach_the_target(cnn):
    # one pipeline reads one pixel a cycle: 64x64 (66x66 padded) caps it near 45,900 fps at 200 MHz
    with pytest.raises(FoldingInfeasible):
        fold(copy.deepcopy(cnn), PART, CLOCK, 80000)
    model = copy.deepcopy(cnn)
    result = fold(model, PART, CLOCK, 80000, replicas="auto")
    assert result.replicas == 2 and result.target_fps == 40000 and result.budget == pytest.approx(0.35)
    _check_result(model, result, 40000)  # one instance, as FINN sees the model
    total = result.summary()
    assert total["est_fps"] == 2 * result.est_fps >= 80000 and total["replicas"] == 2
    assert all(total[r] == 2 * result.resources[r] <= 0.7 * result.capacity[r] for r in fs.RESOURCES)
    report = result.to_report()
    assert report["est_fps"] == total["est_fps"] and report["instance"]["est_fps"] == result.est_fps
    assert fold(copy.deepcopy(cnn), PART, CLOCK, 80000, replicas=2).config == result.config
    assert fold(copy.deepcopy(cnn), PART, CLOCK, 20000, replicas="auto").replicas == 1  # one suffices
    for bad in (0, 17, "two", 1.5):
        with pytest.raises(UserError, match="fpga.replicas"):
            fold(copy.deepcopy(cnn), PART, CLOCK, 80000, replicas=bad)


def test_pareto_table_ours_beside_a_fresh_setfolding(cnn):
    before = copy.deepcopy(cnn.model)
    rows = pareto(cnn, PART, CLOCK, 20000)
    assert cnn.model == before
    targets = [r["target_fps"] for r in rows]
    assert targets[:3] == [5000, 10000, 20000] and len(rows) == 4 and targets[3] > 40000  # + the fastest fit
    for row in rows:
        ours, finn = row["qdeploy"], row["setfolding"]
        assert ours["fits"] and ours["est_fps"] >= row["target_fps"]
        assert ours["binding"] in fs.RESOURCES and 0 < ours["binding_share"] <= 0.7
        if finn["est_fps"] >= row["target_fps"] and finn["fits"]:  # where SetFolding makes it, ours costs no more
            assert ours["binding_share"] <= finn["binding_share"] + 1e-9, row
    shares = [r["qdeploy"]["binding_share"] for r in rows]
    assert shares == sorted(shares)  # more fps never costs less
