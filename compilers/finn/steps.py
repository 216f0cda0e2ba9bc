"""The named steps of the FINN flow: each is `step(model: ModelWrapper, cfg: FlowConfig) -> ModelWrapper`.

FINN's own builder steps (finn.builder.build_dataflow_steps) are reused where they
work as they are. Our own steps replace them where something had to change:

- preprocess:                 FINN takes raw uint8 pixels; prepend Mul(1/255), input UINT8.
- fix_avgpool_trunc:          FINN converts a widening Trunc (TruncTo8bit after a small
                              pool) into a pool 2^k too small; rewrite it exactly first.
- streamline:                 StreamlinePlus (finn-plus's ResNet step, lean_streamline.py) when the graph has
                              forks or joins, else FINN's default; first, per-channel scales in
                              front of depthwise convs move past them (MobileNet-style stacks).
- convert_to_hw:              RoundAndClipThresholds right after the conversion: finn-plus
                              minimizes weight widths first, and Thresholding then asserts
                              non-negative thresholds on the ResNet shortcut pattern.
- create_dataflow_partition:  a graph that does not partition is a UserError naming the
                              node; the parent graph is written atomically.
- folding:                    the seam where a folding plugin (compilers.finn.folding) plugs in;
                              FINN's SetFolding when none is given, else FINN's SetFolding on a
                              fresh copy of the unfolded model as the comparison.
- estimate_reports:           FINN's analyses and report formats, written atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from compilers.finn.part import Part
from core.atomic import atomic_path, write_json
from core.errors import UserError
from quant import float64_values

# Node attributes that make up a folding configuration (FINN's list, as in
# step_target_fps_parallelization / step_apply_folding_config).
FOLDING_ATTRS = (
    "PE",
    "SIMD",
    "EmbFold",
    "SeqFold",
    "parallel_window",
    "ram_style",
    "ram_style_thresholds",
    "ram_style_mask",
    "depth",
    "impl_style",
    "resType",
    "mac_resource",
    "mem_mode",
    "runtime_writeable_weights",
    "depth_trigger_uram",
    "depth_trigger_bram",
)


class FoldingPlan(Protocol):
    """What a folding plugin returns (compilers.finn.folding.FoldingResult satisfies this)."""

    config: dict  # a FINN folding config: {"Defaults": {...}, "<node name>": {"PE": .., "SIMD": ..}}
    est_fps: float


# fold(model, part, clock_mhz, target_fps, budget, replicas=...) -> FoldingPlan
FoldingFn = Callable[..., FoldingPlan]


@dataclass
class FlowConfig:
    """Everything the steps read. `finn` is the DataflowBuildConfig FINN's own steps take."""

    out_dir: Path
    part: Part  # targets.fpga_parts.get_part(name) (uses .fpga_part, .finn_board, .finn_shell_flow, capacities)
    clock_mhz: float
    target_fps: float
    budget: float
    folding: Optional[FoldingFn] = None
    streamline: str = "auto"  # "auto" | "finn" | "plus"
    thresholds: str = "auto"  # "auto" | "standalone" | "embedded": see standalone_thresholds()
    replicas: int | str = 1  # data-parallel instances of the dataflow, or "auto" (folding.fold)
    notes: dict = field(default_factory=dict)  # what steps report back (host ops, folding, ...)
    _finn: Any = None

    @property
    def intermediate_dir(self) -> Path:
        return self.out_dir / "intermediate_models"

    @property
    def report_dir(self) -> Path:
        return self.out_dir / "report"

    @property
    def finn_tmp(self) -> Path:
        return self.out_dir / "finn_tmp"

    @property
    def parent_model_path(self) -> Path:
        return self.intermediate_dir / "dataflow_parent.onnx"

    @property
    def finn(self):
        if self._finn is None:
            self._finn = dataflow_build_config(self)
        return self._finn


def dataflow_build_config(cfg: FlowConfig, **overrides):
    """FINN's DataflowBuildConfig for this design (what FINN's steps and build_dataflow read)."""
    from finn.builder.build_dataflow_config import DataflowBuildConfig, DataflowOutputType, ShellFlowType

    board = getattr(cfg.part, "finn_board", None) or getattr(cfg.part, "board", None)
    fields = dict(
        output_dir=str(cfg.out_dir),
        synth_clk_period_ns=1000.0 / cfg.clock_mhz,
        fpga_part=cfg.part.fpga_part,
        board=board,
        shell_flow_type=ShellFlowType(shell_flow_type(cfg.part)),
        target_fps=max(1, int(round(cfg.target_fps))),
        generate_outputs=[DataflowOutputType.ESTIMATE_REPORTS],
        save_intermediate_models=True,
        minimize_bit_width=True,
        standalone_thresholds=standalone_thresholds(cfg),
    )
    fields.update(overrides)
    return DataflowBuildConfig(**fields)


THRESHOLD_MODES = ("auto", "standalone", "embedded")


def standalone_thresholds(cfg: FlowConfig) -> bool:
    """Whether activations become Thresholding layers of their own (FINN's standalone_thresholds).

    Only an MVAU without embedded thresholds can be FINN's RTL MVU, which packs several
    multiplications into each DSP (DSP48E2, DSP58); the folding then picks per layer
    between it and the HLS MVU on LUTs or DSPs. "auto" is standalone on parts with those
    DSPs and embedded on DSP48E1 parts (Zynq-7000), where the RTL MVU also needs
    narrow-range weights and an HLS MVU with its thresholds inside is the smaller design.
    """
    if cfg.thresholds not in THRESHOLD_MODES:
        raise UserError(f"fpga.thresholds must be one of {', '.join(THRESHOLD_MODES)}, got {cfg.thresholds!r}")
    if cfg.thresholds != "auto":
        return cfg.thresholds == "standalone"
    from finn.util.basic import get_dsp_block

    return get_dsp_block(cfg.part.fpga_part) != "DSP48E1"


def shell_flow_type(part) -> str:
    """'vivado_zynq' for Zynq/Kria boards, 'vitis_alveo' for Alveo cards."""
    explicit = getattr(part, "finn_shell_flow", None)  # targets.fpga_parts.Part
    if explicit:
        return str(explicit)
    from finn.util.basic import alveo_part_map

    board = getattr(part, "finn_board", None) or getattr(part, "board", None)
    return "vitis_alveo" if board in alveo_part_map else "vivado_zynq"


# ---------------------------------------------------------------------------------------
# steps


def preprocess(model, cfg: FlowConfig):
    """Feed raw uint8 pixels: new input `pixels` (UINT8) -> Mul(1/255) -> the QONNX input."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.transformation.general import RemoveStaticGraphInputs

    from quant.preprocess import PIXEL_SCALE

    # exporters list initializers as graph inputs too; FINN expects only the image input
    model = model.transform(RemoveStaticGraphInputs())
    g = model.graph
    old = g.input[0]
    shape = [d.dim_value for d in old.type.tensor_type.shape.dim]
    new_in = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)
    g.input.remove(old)
    g.input.insert(0, new_in)
    g.value_info.append(helper.make_tensor_value_info(old.name, TensorProto.FLOAT, shape))
    g.node.insert(0, helper.make_node("Mul", ["pixels", "pixel_scale"], [old.name], name="Preprocess_Mul"))
    model.set_initializer("pixel_scale", np.asarray(PIXEL_SCALE, dtype=np.float32))
    model.set_tensor_datatype("pixels", DataType["UINT8"])
    return model


def fix_avgpool_trunc(model, cfg: FlowConfig):
    """Rewrite a Trunc that widens (output bits > input bits) into the equivalent exact Trunc.

    TruncAvgPool2d(trunc_quant=TruncTo8bit) over a small window (4-bit inputs, 2x2 pool:
    a 6-bit sum) exports a Trunc whose output is 8 bits: no bit is dropped, the value is
    the sum times the input scale. FINN's AvgPool+Trunc conversion turns it into a
    QuantAvgPool2d with a right shift of max(0, 6 - 8) = 0 followed by the 8-bit output
    scale, which is 4x too small. With output bits = input bits and output scale = input
    scale, qonnx computes the same values and FINN's conversion is correct.
    """
    fixed = []
    for node in model.get_nodes_by_op_type("Trunc"):
        if len(node.input) != 6:  # Trunc v1 has no output scale
            continue
        vals = [model.get_initializer(i) for i in node.input[1:6]]
        if any(v is None for v in vals):
            continue
        scale, _, in_bits, out_scale, out_bits = (np.asarray(v, dtype=np.float64) for v in vals)
        if in_bits.size != 1 or out_bits.size != 1 or float(out_bits) <= float(in_bits):
            continue
        factor = out_scale / scale
        if not np.allclose(factor, 2.0 ** (float(in_bits) - float(out_bits))):
            continue
        for slot, source in ((4, 1), (5, 3)):  # new tensors: initializers may be shared
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, np.asarray(model.get_initializer(node.input[source]), dtype=np.float32).copy())
            node.input[slot] = name
        fixed.append(node.name)
    cfg.notes["widening_truncs_fixed"] = fixed
    cfg.notes["rect_avgpools"] = rect_avgpools(model)
    if cfg.notes["rect_avgpools"]:
        from qonnx.transformation.infer_datatypes import InferDataTypes
        from qonnx.transformation.infer_shapes import InferShapes

        model = model.transform(InferShapes()).transform(InferDataTypes())
    return model


def rect_avgpools(model) -> list[str]:
    """Rewrite, in place, non-square AveragePool -> Trunc pairs as Div -> QuantAvgPool2dRect -> Mul
    (compilers/finn/custom_ops.py). Returns the pools rewritten."""
    from compilers.finn.custom_ops import needs_rect, rect_pool_node

    done = []
    for pool in model.get_nodes_by_op_type("AveragePool"):
        nxt = model.find_direct_successors(pool) or []
        if not needs_rect(pool) or len(nxt) != 1 or nxt[0].op_type != "Trunc":
            continue
        why = rect_pool_node(model, pool, nxt[0])
        if why is not None:  # checks.py rejects these before the flow starts
            raise UserError(f"node {pool.name} (AveragePool): cannot be lowered to FINN [avgpool]: {why}")
        done.append(pool.name)
    return done


def qonnx_to_finn(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_qonnx_to_finn

    return step_qonnx_to_finn(model, cfg.finn)


def tidy_up(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_tidy_up

    return step_tidy_up(model, cfg.finn)


def streamline(model, cfg: FlowConfig):
    """Move float scales into thresholds. StreamlinePlus for graphs with forks/joins."""
    from finn.builder.build_dataflow_steps import step_streamline

    from compilers.finn.lean_streamline import resnet_streamline

    held = hold_outputs(model)
    cfg.notes["outputs_held"] = [k for k, _ in held]
    model, cfg.notes["channel_scales_moved"] = move_channel_scales_past_depthwise(model)
    mode = cfg.streamline
    if mode == "auto":
        mode = "plus" if has_forks_or_joins(model) else "finn"
    cfg.notes["streamline"] = mode
    if mode == "plus":
        model = resnet_streamline(model)
    elif mode == "finn":
        model = step_streamline(model, cfg.finn)
    else:
        raise UserError(f"streamline mode '{cfg.streamline}' is not one of: auto, finn, plus")
    if held:
        from qonnx.transformation.infer_datatypes import InferDataTypes
        from qonnx.transformation.infer_shapes import InferShapes

        restore_outputs(model, held)
        model = model.transform(InferShapes()).transform(InferDataTypes())
    return model


def move_channel_scales_past_depthwise(model):
    """A per-channel float scale (a per-channel activation quantizer's) in front of a depthwise
    conv moves past it (FINN's MoveMulPastDWConv, as finn-plus's MobileNet step does), so that
    streamlining absorbs it into the next MultiThreshold; FINN's default streamline leaves it
    in front of the conv, which then stays in software. Returns (model, the convs passed)."""
    from finn.transformation.streamline.reorder import MoveMulPastDWConv
    from qonnx.transformation.infer_datatypes import InferDataTypes

    before = {n.name: [i for i in n.input] for n in model.get_nodes_by_op_type("Conv")}
    model = model.transform(MoveMulPastDWConv()).transform(InferDataTypes())
    moved = [n.name for n in model.get_nodes_by_op_type("Conv") if before.get(n.name) != list(n.input)]
    return model, moved


def convert_to_hw(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_convert_to_hw
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    from compilers.finn.custom_ops import InferRectQuantAvgPool

    model = model.transform(InferRectQuantAvgPool())  # non-square pools: Im2Col + Pool, as InferPool does
    model = step_convert_to_hw(model, cfg.finn)
    cfg.notes["unit_reshapes_dropped"] = drop_unit_reshapes(model)
    model = model.transform(RoundAndClipThresholds())
    return model.transform(InferDataTypes())


def minimize_bit_width_initial(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_minimize_bit_width_initial

    return step_minimize_bit_width_initial(model, cfg.finn)


def create_dataflow_partition(model, cfg: FlowConfig):
    """Split off the HW layers; the rest (the parent) runs on the host."""
    from finn.analysis.fpgadataflow.unsupported_layers import unsupported_layers
    from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    ok, first_bad = model.analysis(unsupported_layers)[:2]
    if ok is False:
        raise UserError(f"node {first_bad.name} ({first_bad.op_type}) {why_in_software(model, first_bad)}: the graph "
                        "cannot be partitioned; check the model against the FINN rules (compilers/finn/checks.py)")
    parent = model.transform(
        CreateDataflowPartition(partition_model_dir=str(cfg.intermediate_dir / "supported_op_partitions"))
    )
    sdps = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    if len(sdps) != 1:
        raise UserError(f"the graph splits into {len(sdps)} hardware partitions; FINN builds exactly one")
    save_model(parent, cfg.parent_model_path)
    cfg.notes["host_ops"] = [f"{n.name} ({n.op_type})" for n in parent.graph.node if n.op_type != "StreamingDataflowPartition"]
    return ModelWrapper(getCustomOp(sdps[0]).get_nodeattr("model"))


def why_in_software(model, node) -> str:
    """Why a node between hardware layers got none: for a MatMul / Conv, the float tensor it reads
    (a scale streamlining could not absorb) and the node that produced it."""
    if node.op_type not in ("MatMul", "Conv"):
        return "sits between hardware layers but has no FINN hardware layer"
    src = model.find_producer(node.input[0])
    while src is not None and (src.op_type in ("Im2Col", "Transpose", "Reshape", "Flatten")
                               or src.op_type.startswith("Shuffle")):  # values moved, not computed
        src = model.find_producer(src.input[0])
    dtype = model.get_tensor_datatype(node.input[0])
    if src is None or dtype.is_integer():
        return f"reads {dtype.name} values but FINN found no hardware layer for it"
    param = next((model.get_initializer(i) for i in src.input[1:] if model.get_initializer(i) is not None), None)
    what = "a per-channel scale" if param is not None and np.size(param) > 1 else "a float operation"
    return (f"reads a float tensor produced by {src.name} ({src.op_type}, {what}) that streamlining could not "
            "absorb (no FINN hardware layer takes a float input)")


def specialize_layers(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_specialize_layers

    return step_specialize_layers(model, cfg.finn)


def folding(model, cfg: FlowConfig):
    """Set PE/SIMD (parallelism) per layer: the folding plugin if given, else FINN's SetFolding."""
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.qonnx.give_unique_node_names_recursive import GiveUniqueNodeNamesRecursive
    from finn.util.config import extract_model_config

    from compilers.finn.folding import apply_folding, pareto

    model = model.transform(GiveUniqueNodeNamesRecursive())
    if cfg.folding is None:
        cycles = cfg.finn._resolve_cycles_per_frame()
        model = model.transform(SetFolding(cycles, mvau_wwidth_max=cfg.finn.mvau_wwidth_max, two_pass_relaxation=True))
        cfg.notes["folding"] = {"method": "finn.SetFolding", "target_cycles_per_frame": cycles}
    else:
        fresh = copy.deepcopy(model)  # unfolded: FINN's SetFolding for the comparison starts from here
        t0 = time.perf_counter()
        plan = cfg.folding(model, cfg.part, cfg.clock_mhz, cfg.target_fps, cfg.budget, replicas=cfg.replicas)
        seconds = round(time.perf_counter() - t0, 3)
        model = apply_folding(model, dict(plan.config))  # FINN's ApplyConfig, and switched implementations
        cfg.notes["folding"] = {"method": getattr(cfg.folding, "__qualname__", repr(cfg.folding)),
                                "plugin_est_fps": float(plan.est_fps), "search_seconds": seconds,
                                "replicas": int(getattr(plan, "replicas", 1))}
        if hasattr(plan, "to_report"):  # kept with the flow's notes: a resumed flow still has it
            cfg.notes["folding"]["plan"] = plan.to_report()
        # FINN's SetFolding on the unfolded model, at the target among the Pareto points
        points = pareto(fresh, cfg.part, cfg.clock_mhz, cfg.target_fps, cfg.budget, codegen=True)
        at_target = next(p["setfolding"] for p in points if p["target_fps"] == cfg.target_fps)
        setfolding = {k: v for k, v in at_target.items() if k != "codegen_error"}
        cfg.notes["folding"]["comparison"] = {"setfolding": setfolding, "pareto": points}
    model = model.transform(GiveUniqueNodeNamesRecursive())
    write_json(cfg.report_dir / "folding_config.json", extract_model_config(model, None, FOLDING_ATTRS))
    return model


def transpose_decomposition(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_transpose_decomposition

    return step_transpose_decomposition(model, cfg.finn)


def minimize_bit_width(model, cfg: FlowConfig):
    from finn.builder.build_dataflow_steps import step_minimize_bit_width

    return step_minimize_bit_width(model, cfg.finn)


def estimate_reports(model, cfg: FlowConfig):
    """FINN's analytical estimates, in the files and formats step_generate_estimate_reports writes."""
    from functools import partial

    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.op_and_param_counts import aggregate_dict_keys, op_and_param_counts
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles

    fpga_part = cfg.part.fpga_part
    report = cfg.report_dir
    write_json(report / "op_and_param_counts.json", model.analysis(op_and_param_counts))
    write_json(report / "estimate_layer_cycles.json", model.analysis(exp_cycles_per_layer))
    resources = model.analysis(partial(res_estimation, fpgapart=fpga_part))
    resources["total"] = aggregate_dict_keys(resources)
    write_json(report / "estimate_layer_resources.json", resources)
    model = model.transform(AnnotateCycles())
    perf = dict(model.analysis(dataflow_performance))
    clk_ns = 1000.0 / cfg.clock_mhz
    perf["estimated_throughput_fps"] = (1e9 / clk_ns) / perf["max_cycles"]
    perf["estimated_latency_ns"] = perf["critical_path_cycles"] * clk_ns
    write_json(report / "estimate_network_performance.json", perf)
    return model


def hw_codegen(model, cfg: FlowConfig):
    """HLS C++ / filled RTL templates per layer, in FINN's build dir (cfg.finn_tmp)."""
    from finn.builder.build_dataflow_steps import step_hw_codegen

    from compilers.finn.hex_packing import fast_hex_packing

    with fast_hex_packing():  # the same files, packed with numpy
        model = step_hw_codegen(model, cfg.finn)
    cfg.notes["generated_sources"] = generated_sources(model)
    return model


# ---------------------------------------------------------------------------------------
# helpers


def hold_outputs(model) -> list[tuple[int, Optional[tuple[str, Any]]]]:
    """Prepare the 4-D graph outputs (a segmentation map) for FINN's streamlining, in place.

    Two FINN streamlining problems with a feature-map output that also feeds other layers:
    - MoveOpPastFork (MoveMulPastFork, MoveTransposePastFork) asserts "Must have >1
      consumer" when a forked tensor is also a graph output (qonnx counts the output as a
      branch; FINN then finds one consumer);
    - StreamlinePlus never ends when the output is scale Mul -> NHWC->NCHW Transpose:
      MoveScalarLinearPastInvariants moves the scalar Mul past the Transpose and
      MoveTransposePastEltwise moves it back.
    So each such output's constant scale (Mul/Div) is taken off (it stays for the scale's
    other consumers) and an OutputMarker (custom_ops.py) reads the rest and writes the
    output, so the output is an ordinary branch of the fork. `restore_outputs` removes
    the markers and puts the scales back. Returns [(output index, (op, scale) or None)].
    """
    from onnx import helper

    from compilers.finn.custom_ops import DOMAIN

    held = []
    for k, out in enumerate(list(model.graph.output)):
        shape = model.get_tensor_shape(out.name)
        if shape is None or len(shape) != 4:
            continue
        src, scale = out.name, None
        node = model.find_producer(out.name)
        if node is not None and node.op_type in ("Mul", "Div") and model.get_initializer(node.input[1]) is not None:
            src, scale = node.input[0], (node.op_type, np.asarray(model.get_initializer(node.input[1])))
            if not model.find_consumers(out.name):
                model.graph.node.remove(node)
        # out.name becomes an inner tensor (or disappears); the marker writes a new output
        new = model.make_new_valueinfo_name()
        elem = out.type.tensor_type.elem_type
        model.graph.output.remove(out)
        if src == out.name or model.find_consumers(out.name):
            model.graph.value_info.append(helper.make_tensor_value_info(out.name, elem, shape))
        model.graph.output.insert(k, helper.make_tensor_value_info(new, elem, shape))
        model.graph.node.append(helper.make_node("OutputMarker", [src], [new], domain=DOMAIN, name=f"OutputMarker_{k}"))
        held.append((k, scale))
    return held


def restore_outputs(model, held) -> None:
    """Undo `hold_outputs` after streamlining, in place: drop the markers and put each scale
    back (before a trailing Transpose, so it stays inside the hardware partition)."""
    from onnx import helper

    for k, scale in held:
        out = model.graph.output[k]
        marker = model.find_producer(out.name)
        assert marker is not None and marker.op_type == "OutputMarker", "streamlining moved an output marker"
        src = marker.input[0]
        shape, elem = model.get_tensor_shape(src), out.type.tensor_type.elem_type
        model.graph.node.remove(marker)
        for vi in [vi for vi in model.graph.value_info if vi.name == src]:
            model.graph.value_info.remove(vi)
        model.graph.output.remove(out)
        model.graph.output.insert(k, helper.make_tensor_value_info(src, elem, shape))
        if scale is None:
            continue
        op, value = scale
        param, new = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
        model.set_initializer(param, value)
        node = model.find_producer(src)
        if node is not None and node.op_type == "Transpose" and len(model.find_consumers(node.input[0]) or []) == 1:
            # producer -> scale -> Transpose -> output
            model.set_tensor_shape(new, model.get_tensor_shape(node.input[0]))
            mul = helper.make_node(op, [node.input[0], param], [new], name=f"OutputScale_{k}")
            node.input[0] = new
            model.graph.node.insert(list(model.graph.node).index(node), mul)
        else:  # ... -> src -> scale -> output (src may feed other layers too)
            model.graph.output.remove(model.graph.output[k])
            model.graph.output.insert(k, helper.make_tensor_value_info(new, elem, shape))
            model.graph.value_info.append(helper.make_tensor_value_info(src, elem, shape))
            model.graph.node.append(helper.make_node(op, [src, param], [new], name=f"OutputScale_{k}"))


def drop_unit_reshapes(model) -> list[str]:
    """Remove Transpose/Shuffle -> Flatten pairs that only move size-1 axes, in place.

    After a global pool the map is 1x1: NHWC [1,1,1,C] -> NCHW [1,C,1,1] -> Flatten [1,C]
    keeps the stream as it is. FINN's RemoveCNVtoFCFlatten removes such a pair only when
    an MVAU reads the Flatten, and its "standalone flatten" case rewires the consumer's
    input 0 whichever input the Flatten fed (a StreamingConcat of three pooled vectors
    came out with its inputs wrong). A two-headed model concatenates pooled vectors before
    its linear layer, so the pairs stay (a Flatten has no hardware layer: partitioning
    fails). Here a Flatten whose input has at most one axis > 1 is removed (its readers
    read its input, at the right input index) and so is a Transpose/Shuffle before it
    that then has no reader. Returns the nodes removed.
    """
    from finn.util.fpgadataflow import is_fpgadataflow_node

    def unit(name):
        shape = model.get_tensor_shape(name)
        return shape is not None and sum(d > 1 for d in shape[1:]) <= 1

    done = []
    outs = {o.name for o in model.graph.output}
    for flat in [n for n in model.graph.node if n.op_type in ("Flatten", "Reshape")]:
        src, dst = flat.input[0], flat.output[0]
        readers = model.find_consumers(dst) or []
        if not unit(src) or dst in outs or not readers or not all(is_fpgadataflow_node(r) for r in readers):
            continue
        prod = model.find_producer(src)
        if prod is not None and (prod.op_type == "Transpose" or prod.op_type.startswith("Shuffle")) \
                and unit(prod.input[0]) and len(model.find_consumers(src) or []) == 1:
            model.graph.node.remove(prod)
            done.append(prod.name)
            src = prod.input[0]
            prod = model.find_producer(src)
        if prod is None or not is_fpgadataflow_node(prod):
            continue  # the Flatten is the first node: leave it to FINN
        for r in readers:
            r.input[:] = [src if i == dst else i for i in r.input]
        model.graph.node.remove(flat)
        done.append(flat.name)
    return done


def has_forks_or_joins(model) -> bool:
    """True when a tensor feeds several nodes or an Add joins two computed tensors."""
    init = {t.name for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
        if n.op_type == "Add" and sum(i not in init for i in n.input) == 2:
            return True
    return any(c > 1 for name, c in uses.items() if name not in init)


def generated_sources(model) -> dict[str, list[str]]:
    """{node name: generated source files} for every HLS/RTL node after hw_codegen."""
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.graph.node:
        if not node.domain.startswith("finn.custom_op.fpgadataflow."):
            continue
        d = getCustomOp(node).get_nodeattr("code_gen_dir_ipgen")
        files = sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file()) if d and Path(d).is_dir() else []
        out[node.name] = files
    return out


def save_model(model, path: Path) -> Path:
    """Save a stage; an exact model (quant/float64_values.py) with its float64 values."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save(float64_values.recorded(model), str(tmp))
    return path


def config_summary(cfg: FlowConfig) -> dict:
    part = cfg.part
    part_info = dataclasses.asdict(part) if dataclasses.is_dataclass(part) else {
        k: getattr(part, k) for k in ("name", "board", "fpga_part") if hasattr(part, k)
    }
    return {
        "part": part_info,
        "clock_mhz": cfg.clock_mhz,
        "target_fps": cfg.target_fps,
        "budget": cfg.budget,
        "streamline": cfg.streamline,
        "thresholds": cfg.thresholds,
        "replicas": cfg.replicas,
        "standalone_thresholds": standalone_thresholds(cfg),
    }
