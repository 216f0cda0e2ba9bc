"""compilers.finn.flow: a small residual net through the whole offline FINN flow.

One build (module fixture) is shared: every stage bit-exact on all samples, the
artifacts in FINN's formats, generated HLS/RTL sources, the "next steps" without
Vivado, and a perturbed threshold caught at the right node.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_finn_models import exported, images, logits

from compilers.finn import STEPS, lower
from compilers.finn.continuation import VIVADO_STEPS, remaining_steps_resolvable, run_continuation
from compilers.finn.parity import Stage, check_stages, full_context
from core.errors import UserError
from targets.fpga_parts import get_part

SIZE, N = 16, 64
STEP_NAMES = [s.__name__ for s in STEPS]


@pytest.fixture(scope="module")
def flow_input():
    path, model = exported("ResidualNet", size=SIZE)
    pixels = images(N, SIZE, seed=3)
    return path, pixels, logits(model, pixels)


def _lower(path, out_dir, pixels, reference, messages):
    """lower() on the small net, with the parity worker from the start (a flow this short
    would otherwise check its stages in process: flow.PARITY_WORKER_AFTER_S)."""
    from compilers.finn import flow

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XILINX_VIVADO", raising=False)
        mp.setattr(flow, "PARITY_WORKER_AFTER_S", 0.0)
        return lower(path, out_dir, get_part("zcu104"), clock_mhz=200, target_fps=2000, budget=0.7,
                     samples_uint8=pixels, reference_logits=reference, log=messages.append)


@pytest.fixture(scope="module")
def build(flow_input, tmp_path_factory):
    path, pixels, reference = flow_input
    messages: list[str] = []
    result = _lower(path, tmp_path_factory.mktemp("finn_residual"), pixels, reference, messages)
    return result, pixels, reference, messages


def test_every_stage_is_bit_exact_on_all_samples(build):
    result, pixels, _, _ = build
    assert [p.stage for p in result.parity] == STEP_NAMES
    for p in result.parity:
        assert p.n == N
        assert p.exact and p.argmax_agreement == 1.0, p
        assert p.max_abs_diff_rel < 1e-6  # float rounding of the final scale only
        assert p.executor == "batched" and p.executor_check <= 1e-6  # batched == FINN's execute_onnx
    assert result.bit_exact
    # python mode runs specialized layers as their generic op: those stages reuse the result
    same = {p.stage: p.same_as for p in result.parity}
    assert same["specialize_layers"] == "create_dataflow_partition" and same["folding"] is None
    # minimize_bit_width may find nothing left to narrow after folding; hw_codegen changes no values
    assert same["minimize_bit_width"] in (None, "folding")
    assert same["hw_codegen"] == (same["minimize_bit_width"] or "minimize_bit_width")
    assert result.notes["streamline"] == "plus"  # forks and joins: finn-plus StreamlinePlus


def test_stage_models_times_and_reports(build):
    result, *_ = build
    out = result.out_dir
    for name in STEP_NAMES:
        assert (out / "intermediate_models" / f"{name}.onnx").is_file()
    assert list(json.loads((out / "time_per_step.json").read_text())) == STEP_NAMES
    report = out / "report"
    perf = json.loads((report / "estimate_network_performance.json").read_text())
    assert {"critical_path_cycles", "max_cycles", "max_cycles_node_name", "estimated_throughput_fps",
            "estimated_latency_ns"} <= set(perf)
    assert perf["estimated_throughput_fps"] == pytest.approx(200e6 / perf["max_cycles"])
    assert result.est_fps == pytest.approx(perf["estimated_throughput_fps"]) and result.est_fps >= 2000
    resources = json.loads((report / "estimate_layer_resources.json").read_text())
    assert resources["total"]["LUT"] == result.resources["LUT"] > 0
    cycles = json.loads((report / "estimate_layer_cycles.json").read_text())
    assert max(cycles.values()) == perf["max_cycles"]
    folding = json.loads((report / "folding_config.json").read_text())
    mvaus = [k for k in folding if k.startswith("MVAU")]
    assert mvaus and all(folding[k]["PE"] >= 1 and folding[k]["SIMD"] >= 1 for k in mvaus)
    assert result.budget_use["LUT"] == pytest.approx(result.resources["LUT"] / (230_400 * 0.7), rel=1e-3)
    saved = json.loads((out / "finn_result.json").read_text())
    assert saved["bit_exact"] is True and saved["stages"] == STEP_NAMES


def test_generated_sources_are_present(build):
    result, *_ = build
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    final = ModelWrapper(str(result.final_model))
    kinds = {n.op_type for n in final.graph.node}
    assert {"DuplicateStreams_hls", "ElementwiseAdd_hls", "ConvolutionInputGenerator_rtl"} <= kinds
    assert kinds & {"MVAU_hls", "MVAU_rtl"} and "Thresholding_rtl" in kinds  # standalone thresholds on a zcu104
    for node in final.graph.node:
        code_dir = Path(getCustomOp(node).get_nodeattr("code_gen_dir_ipgen"))
        assert code_dir.is_dir() and result.out_dir / "finn_tmp" in code_dir.parents
        suffixes = {p.suffix for p in code_dir.rglob("*") if p.is_file()}
        if node.op_type.endswith("_hls"):
            assert ".cpp" in suffixes and ".tcl" in suffixes, (node.name, suffixes)
        else:
            assert suffixes & {".v", ".sv"}, (node.name, suffixes)
        assert result.generated_sources[node.name]


def test_without_vivado_the_next_steps_are_spelled_out(build):
    result, _, _, messages = build
    text = "\n".join(messages)
    assert "XILINX_VIVADO is not set" in text
    assert result.continuation and " build " in result.continuation
    next_steps = (result.out_dir / "NEXT_STEPS.txt").read_text()
    positions = [next_steps.index(s) for s in VIVADO_STEPS]
    assert positions == sorted(positions)  # listed in order
    assert result.continuation in next_steps and str(result.out_dir / "finn_build_config.json") in next_steps
    assert str(result.final_model) in result.continuation


def test_build_config_continues_the_same_design(build):
    """finn_build_config.json is a valid FINN DataflowBuildConfig for the remaining steps."""
    from finn.builder.build_dataflow_config import DataflowBuildConfig

    result, *_ = build
    cfg = DataflowBuildConfig.construct_from(result.out_dir / "finn_build_config.json")
    assert cfg.steps == list(VIVADO_STEPS) and remaining_steps_resolvable(cfg.steps) == []
    assert cfg.fpga_part == "xczu7ev-ffvc1156-2-e" and cfg.board == "ZCU104"
    assert cfg.synth_clk_period_ns == pytest.approx(5.0) and cfg.shell_flow_type.value == "vivado_zynq"
    assert {o.value for o in cfg.generate_outputs} >= {"bitfile", "deployment_package", "pynq_driver"}


def test_with_vivado_the_continuation_runs_finn_build(build, tmp_path):
    from compilers.finn.continuation import Continuation

    result, *_ = build
    calls = []

    class Done:
        returncode = 0

    cont = Continuation(result.out_dir / "finn_build_config.json", result.final_model, tmp_path / "vivado",
                        result.continuation.split(), VIVADO_STEPS)
    run_continuation(cont, {"FINN_RTLLIB": "/x"}, runner=lambda cmd, **kw: calls.append((cmd, kw)) or Done())
    (cmd, kw), = calls
    assert cmd[1] == "build" and kw["env"]["FINN_RTLLIB"] == "/x"

    class Failed:
        returncode = 1

    with pytest.raises(UserError, match="Vivado steps failed"):
        run_continuation(cont, {}, runner=lambda cmd, **kw: Failed())


def _perturbed(build, tmp_path):
    """The folding stage, and minimize_bit_width's model with one threshold of one layer raised
    (the channel most often above its lowest threshold: its output drops by one there)."""
    result, pixels, reference, _ = build
    inter = result.out_dir / "intermediate_models"
    parent = inter / "dataflow_parent.onnx"
    good = Stage("folding", inter / "folding.onnx", parent)
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(inter / "minimize_bit_width.onnx"))
    # thresholds: a Thresholding layer's second input (standalone) or an MVAU's third (embedded)
    with_thresholds = [(n, n.input[1] if n.op_type.startswith("Thresholding") else n.input[2])
                       for n in model.graph.node if n.op_type.startswith("Thresholding")
                       or (n.op_type.startswith("MVAU") and len(n.input) == 3)]
    node, thr = with_thresholds[2]
    thresholds = model.get_initializer(thr).copy()
    ctx, *_ = full_context(good, pixels[:8])
    out = np.asarray(ctx[node.output[0]]).reshape(-1, thresholds.shape[0])
    channel = int((out > 0).sum(axis=0).argmax())
    thresholds[channel, 0] += 10_000
    model.set_initializer(thr, thresholds)
    bad_path = tmp_path / "perturbed.onnx"
    model.save(str(bad_path))
    return good, Stage("perturbed", bad_path, parent), node


def test_perturbed_threshold_is_caught_at_its_node(build, tmp_path):
    """Raise one threshold of one layer in a stage model: parity fails and names that layer."""
    _, pixels, reference, _ = build
    good, perturbed, node = _perturbed(build, tmp_path)
    res = check_stages([good, perturbed], pixels, reference)
    assert res[0].exact
    bad = res[1]
    assert not bad.exact
    div = bad.first_divergence
    assert div["node"] == node.name and div["tensor"] == node.output[0] and div["compared_with"] == "folding"
    assert div["max_abs_diff"] == 1.0  # one quantization level


def _without_seconds(results):
    return [dataclasses.replace(r, seconds=0.0) for r in results]


def test_the_background_checker_gives_the_in_process_results(build, tmp_path):
    """StageChecker's worker process (what lower() uses) against check_stages in this process, on
    a good stage, a perturbed one (localized here) and a copy of it (reused: same_as)."""
    from compilers.finn.parity import StageChecker

    _, pixels, reference, _ = build
    good, perturbed, _ = _perturbed(build, tmp_path)
    stages = [good, perturbed, dataclasses.replace(perturbed, name="perturbed_again")]
    here = check_stages(stages, pixels, reference)
    with StageChecker(pixels, reference) as checker:
        for stage in stages:
            checker.add(stage)
        there = checker.results()
    assert _without_seconds(there) == _without_seconds(here)
    assert [r.exact for r in there] == [True, False, False] and there[2].same_as == "perturbed"
    assert there[2].first_divergence == there[1].first_divergence is not None


def test_a_dead_checker_worker_costs_time_not_results(build, tmp_path):
    """The worker killed (as by the OOM killer) with stages queued: they run in this process."""
    import os
    import signal

    from compilers.finn.parity import StageChecker

    _, pixels, reference, _ = build
    good, perturbed, _ = _perturbed(build, tmp_path)
    with StageChecker(pixels, reference) as checker:
        checker.add(good)
        (process,) = checker._pool._processes.values()
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        checker.add(perturbed)
        there = checker.results()
    assert _without_seconds(there) == _without_seconds(check_stages([good, perturbed], pixels, reference))


def test_an_interrupted_flow_resumes_after_its_last_finished_step(build, flow_input, tmp_path):
    """As if killed during `folding`: the rerun loads specialize_layers' model and notes and runs the
    rest (FINN's start_step idiom), to the same design, bit-exact; a changed setting starts afresh."""
    import shutil

    from compilers.finn.flow import FLOW_STATE, finished_state

    result, pixels, reference, _ = build
    out = tmp_path / "finn"
    shutil.copytree(result.out_dir, out, symlinks=True)
    state = json.loads((out / FLOW_STATE).read_text())
    assert state["done"] == STEP_NAMES
    cut = STEP_NAMES.index("folding")
    state["done"] = STEP_NAMES[:cut]
    (out / FLOW_STATE).write_text(json.dumps(state))
    for name in STEP_NAMES[cut:]:
        (out / "intermediate_models" / f"{name}.onnx").unlink()
    for name in ("finn_result.json", "parity.json"):
        (out / name).unlink()

    messages: list[str] = []
    again = _lower(flow_input[0], out, pixels, reference, messages)
    assert any("resuming after specialize_layers" in m for m in messages)
    ran = [m.split("] ")[1] for m in messages if m.startswith("finn [")]
    assert ran == STEP_NAMES[cut:]
    assert again.bit_exact and [p.stage for p in again.parity] == STEP_NAMES
    assert again.est_fps == result.est_fps and again.resources == result.resources
    assert again.notes == result.notes
    assert list(json.loads((out / "time_per_step.json").read_text())) == STEP_NAMES

    from compilers.finn import steps as S

    cfg = S.FlowConfig(out, get_part("zcu104"), 200.0, 2000.0, 0.7)
    assert finished_state(cfg, state["key"], STEP_NAMES) is None  # it finished every step: a rerun runs again
    (out / FLOW_STATE).write_text(json.dumps(state))  # interrupted after specialize_layers again
    assert finished_state(cfg, state["key"], STEP_NAMES) is not None
    assert finished_state(cfg, "another input or setting", STEP_NAMES) is None
    (out / "intermediate_models" / "tidy_up.onnx").unlink()
    assert finished_state(cfg, state["key"], STEP_NAMES) is None  # a step's model is gone: start afresh


def test_data_parallel_replicas_are_labelled_in_the_result_and_next_steps(flow_input, tmp_path):
    """Beyond one pipeline's pixel rate (16x16: about 610k fps at 200 MHz) the folding takes two
    instances; FINN builds one, and the notes, NEXT_STEPS.txt and replication.json say so."""
    from compilers.finn.folding import fold

    path, pixels, reference = flow_input
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XILINX_VIVADO", raising=False)
        result = lower(path, tmp_path, get_part("zcu104"), clock_mhz=200, target_fps=1_000_000, budget=0.7,
                       samples_uint8=pixels[:8], reference_logits=reference[:8], folding=fold, replicas="auto",
                       log=lambda m: None)
    assert result.bit_exact
    f = result.notes["folding"]
    plan = f["plan"]
    assert f["replicas"] == plan["replicas"] == 2
    assert plan["est_fps"] == 2 * plan["instance"]["est_fps"] >= 1_000_000
    assert result.est_fps == pytest.approx(plan["instance"]["est_fps"])  # FINN's estimate is one instance's
    assert all(plan["resources"][r] == 2 * v for r, v in plan["instance"]["resources"].items())
    text = (tmp_path / "NEXT_STEPS.txt").read_text()
    assert "Data-parallel replication: the folding chose 2 instances" in text
    assert json.loads((tmp_path / "replication.json").read_text())["replicas"] == 2
