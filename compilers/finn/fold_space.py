"""The folding choices of each FINN hardware layer, priced with FINN's own estimates.

A *unit* is what must be folded together: one HW node, or a depthwise sliding-window
generator (ConvolutionInputGenerator, depthwise=1) with the VVAU/Pool it feeds, whose
SIMD must equal that consumer's PE (the rule FINN's SetFolding follows).

`unit_table(model, unit, part)` lists every FINN-legal choice for a unit: its node
attributes (PE/SIMD, and the resource switches resType / ram_style / parallel_window),
its cycles per frame (`get_exp_cycles`, the max over the unit's nodes) and its
resources (`lut/bram/uram/dsp_estimation`, summed). The choices come from one explicit
registry, `RULES`, keyed by op type without its _hls/_rtl suffix; an op type missing
from it is folded by PE over its output channels or SIMD over its input channels if
it has those attributes, else left as it is. Every choice is checked on a scratch copy
of the node (folded shapes must exist, an HLS node's stream widths must fit ap_int, and
where FINN prepares code generation without writing files (`CODEGEN_PREPARE`: the RTL
sliding window) that preparation must succeed), so the model itself is never touched here.

A layer may also switch implementation (`ALTERNATIVES`: the DSP-based RTL MVU or the
HLS MVU on LUTs or DSPs); such a choice carries the new op type as `IMPL`.

A table depends only on the unit's node attributes (not its names), which of their
inputs are streams, and the FPGA part, so identical layers (ResNet blocks) share one
table; tables are memoised per process in `_TABLES` (bounded).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import onnx

from compilers.finn.part import Part
from core.errors import UserError

RESOURCES = ("LUT", "BRAM_18K", "URAM", "DSP")
# Attributes the rules may set.
SEARCHED_ATTRS = ("PE", "SIMD", "resType", "ram_style", "parallel_window")  # and IMPL (below)
# Written by FINN's annotation passes, never read by the estimates; every other
# attribute is part of a table's key.
_IGNORED_ATTRS = ("cycles_estimate", "res_estimate", "cycles_rtlsim")


@dataclass(frozen=True)
class Unit:
    nodes: tuple[str, ...]  # node names; for a depthwise pair (generator, consumer)
    rule: str  # key in RULES, or "generic"


@dataclass(frozen=True)
class Table:
    """Pareto-pruned choices of one unit, sorted by cycles (ascending)."""

    cycles: np.ndarray  # int64 [n]
    res: np.ndarray  # int64 [n, 4] in RESOURCES order
    width: np.ndarray  # int64 [n]: stream bits in + out, the tie-break among equal estimates
    estimates: tuple  # per choice: per node a NodeEstimate
    attrs: tuple  # per choice: per node a tuple of (attr, value) pairs


# ---------------------------------------------------------------- helpers


def _inst(node: onnx.NodeProto):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node)


def base_op(op_type: str) -> str:
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def _is_hls(node) -> bool:
    return node.op_type.endswith("_hls")


@functools.lru_cache(maxsize=4096)
def divisors(n: int) -> tuple[int, ...]:
    n = int(n)
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


def _has(inst, attr: str) -> bool:
    return attr in inst.get_nodeattr_types()


def _mem_styles(part: Part, ultra: bool = False) -> tuple[str, ...]:
    """Memory styles worth trying: LUTRAM and BRAM, plus URAM where it needs no extra setup."""
    return ("distributed", "block", "ultra") if ultra and part.uram > 0 else ("distributed", "block")


def _weight_styles(node, inst, part: Part) -> tuple:
    # URAM weights on UltraScale+ require runtime_writeable_weights=1 (FINN asserts it in
    # generate_infra_hdl), i.e. weights loaded by the driver at run time: not offered.
    if _has(inst, "mem_mode") and inst.get_nodeattr("mem_mode") == "internal_decoupled":
        if not _is_hls(node):
            # FINN's RTL MVU/VVU LUT estimate is 0 (its DSP datapath) and leaves out a
            # distributed weight memory, which would make LUTRAM weights look free: the
            # RTL layers keep their weights in block RAM, which FINN's estimate counts.
            return ("block",)
        return _mem_styles(part)
    return (None,)


def _res_types(node, inst) -> tuple:
    if not _has(inst, "resType"):
        return (None,)
    # The RTL MVU/VVU is DSP-based: FINN rejects resType=lut for it.
    return ("lut", "dsp") if _is_hls(node) else ("dsp",)


def _attrs(**kv) -> dict:
    return {k: v for k, v in kv.items() if v is not None}


# ---------------------------------------------------------------- rules
# A rule yields, per choice, one attribute dict per node of the unit.

Rule = Callable[[list, list, Part], Iterator[tuple[dict, ...]]]


def _mvau(nodes, insts, part):
    (node,), (inst,) = nodes, insts
    mw, mh = inst.get_nodeattr("MW"), inst.get_nodeattr("MH")
    for pe in divisors(mh):
        for simd in divisors(mw):
            for rt in _res_types(node, inst):
                for rs in _weight_styles(node, inst, part):
                    yield (_attrs(PE=pe, SIMD=simd, resType=rt, ram_style=rs),)


def _depthwise(nodes, insts, part):
    """VVAU or Pool, with the depthwise generator feeding it (if any) as nodes[0]."""
    consumer, inst = nodes[-1], insts[-1]
    swg = insts[0] if len(nodes) == 2 else None
    channels = inst.get_nodeattr("Channels")
    vvau = base_op(consumer.op_type) == "VVAU"
    kernel = int(np.prod(inst.get_nodeattr("Kernel"))) if vvau else 1
    rts = _res_types(consumer, inst) if vvau else (None,)
    wss = _weight_styles(consumer, inst, part) if vvau else (None,)
    swg_styles = _mem_styles(part, ultra=True) if swg is not None else (None,)
    for pe in divisors(channels):
        # SIMD (kernel-window parallelism) only once PE is fully unfolded: the generator
        # cannot yet feed a partially-folded channel dimension in parallel-window mode.
        for simd in (divisors(kernel) if vvau and pe == channels else (1,)):
            for rt in rts:
                for rs in wss:
                    for gs in swg_styles:
                        own = _attrs(PE=pe, SIMD=simd if vvau else None, resType=rt, ram_style=rs)
                        if swg is None:
                            yield (own,)
                        else:
                            yield (_attrs(SIMD=pe, parallel_window=int(simd > 1), ram_style=gs), own)


def _swg(nodes, insts, part):
    (inst,) = insts
    channels = inst.get_nodeattr("IFMChannels")
    rtl = nodes[0].op_type.endswith("_rtl")
    for style in _mem_styles(part, ultra=True):
        for simd in divisors(channels):
            yield (_attrs(SIMD=simd, parallel_window=0 if rtl else None, ram_style=style),)
        if rtl:  # the RTL generator also emits a whole window per cycle, at SIMD = channels
            yield (_attrs(SIMD=channels, parallel_window=1, ram_style=style),)


def _thresholding(nodes, insts, part):
    (node,), (inst,) = nodes, insts
    # Thresholding_rtl picks its memories by depth triggers; the HLS one by ram_style.
    styles = _mem_styles(part) if _is_hls(node) else (None,)
    for pe in divisors(inst.get_nodeattr("NumChannels")):
        for style in styles:
            yield (_attrs(PE=pe, ram_style=style),)


def _over(attr: str, dim: Callable) -> Rule:
    """PE or SIMD over the divisors of one dimension."""

    def rule(nodes, insts, part):
        for v in divisors(dim(insts[0])):
            yield ({attr: v},)

    return rule


def _elementwise(nodes, insts, part):
    (inst,) = insts
    const = "const" in (inst.get_nodeattr("lhs_style"), inst.get_nodeattr("rhs_style"))
    styles = _mem_styles(part) if const else (None,)
    for pe in divisors(inst.get_normal_output_shape()[-1]):
        for style in styles:
            yield (_attrs(PE=pe, ram_style=style),)


def _concat(nodes, insts, part):
    (inst,) = insts
    common = functools.reduce(np.gcd, [int(c) for c in inst.get_nodeattr("ChannelsPerStream")])
    for simd in divisors(int(common)):
        yield ({"SIMD": simd},)


def _generic(nodes, insts, part):
    (inst,) = insts
    if _has(inst, "PE"):
        yield from _over("PE", lambda i: i.get_normal_output_shape()[-1])(nodes, insts, part)
    elif _has(inst, "SIMD"):
        yield from _over("SIMD", lambda i: i.get_normal_input_shape()[-1])(nodes, insts, part)
    else:
        yield ({},)


def _attr(name):
    return lambda inst: inst.get_nodeattr(name)


# The one registry: op type (without _hls/_rtl) -> rule. Ops starting with
# "Elementwise" share `_elementwise`.
RULES: dict[str, Rule] = {
    "MVAU": _mvau,
    "VVAU": _depthwise,
    "Pool": _depthwise,
    "ConvolutionInputGenerator": _swg,
    "Thresholding": _thresholding,
    "FMPadding": _over("SIMD", _attr("NumChannels")),
    "FMPadding_Pixel": _over("SIMD", _attr("NumChannels")),
    "DuplicateStreams": _over("PE", _attr("NumChannels")),
    "GlobalAccPool": _over("PE", _attr("NumChannels")),
    "LabelSelect": _over("PE", _attr("Labels")),
    "StreamingConcat": _concat,
    "StreamingSplit": _concat,
    "Elementwise": _elementwise,
}
# Other implementations of a specialized op the folding may switch a layer to: the RTL
# MVU computes on DSPs (its LUT estimate is 0), the HLS one on LUTs or DSPs (resType), so
# a design can balance LUT against DSP layer by layer. A choice that switches carries
# the pseudo-attribute IMPL (the new op type); `swap_impl` applies it.
ALTERNATIVES: dict[str, tuple[str, ...]] = {"MVAU_rtl": ("MVAU_hls",)}
IMPL = "op_type"


def swap_impl(node: onnx.NodeProto, op_type: str) -> None:
    """Turn a specialized node into another implementation of the same op, in place, as
    FINN's SpecializeLayers makes one (same inputs, outputs and generic attributes)."""
    style = op_type.rsplit("_", 1)[-1]
    node.op_type, node.domain = op_type, f"finn.custom_op.fpgadataflow.{style}"
    known = _inst(node).get_nodeattr_types()
    keep = [a for a in node.attribute if a.name in known]
    del node.attribute[:]
    node.attribute.extend(keep)


# Ops inserted after folding from the widths folding chose; never folded themselves.
FIXED = ("StreamingDataWidthConverter", "StreamingFIFO", "IODMA")


def rule_name(op_type: str) -> str:
    base = base_op(op_type)
    if base in FIXED:
        return "fixed"
    if base.startswith("Elementwise"):
        return "Elementwise"
    return base if base in RULES else "generic"


# ---------------------------------------------------------------- units


def is_hw(node) -> bool:
    return node.op_type.endswith(("_hls", "_rtl"))


def find_units(model) -> list[Unit]:
    """Group the model's HW nodes into units, in graph order."""
    units = []
    for node in model.graph.node:
        if not is_hw(node):
            continue
        rule = rule_name(node.op_type)
        if rule in ("VVAU", "Pool"):
            prod = model.find_producer(node.input[0])
            if _is_depthwise_generator(prod):
                units.append(Unit((prod.name, node.name), rule))
                continue
        if _is_depthwise_generator(node):
            cons = model.find_consumer(node.output[0])
            if cons is not None and rule_name(cons.op_type) in ("VVAU", "Pool"):
                continue  # folded with its consumer, which comes later in graph order
        units.append(Unit((node.name,), rule))
    return units


def _is_depthwise_generator(node) -> bool:
    return node is not None and is_hw(node) and rule_name(node.op_type) == "ConvolutionInputGenerator" \
        and _inst(node).get_nodeattr("depthwise") == 1


# ---------------------------------------------------------------- tables

_TABLES: dict[tuple, Table] = {}
_TABLES_MAX = 1024


def _signature(node) -> tuple:
    keep = [a for a in node.attribute if a.name not in _IGNORED_ATTRS]
    return (node.op_type, node.domain, tuple(sorted((a.name, a.SerializeToString()) for a in keep)))


def _stream_inputs(model, node) -> tuple[int, ...]:
    return tuple(i for i, t in enumerate(node.input) if t and model.get_initializer(t) is None)


@dataclass(frozen=True)
class NodeEstimate:
    cycles: int
    res: tuple  # (LUT, BRAM_18K, URAM, DSP)
    out: tuple  # (folded last dim, stream width) of output 0
    ins: tuple  # per stream input: (input index, folded last dim, stream width)

    @property
    def width(self) -> int:
        return self.out[1] + sum(w for _, _, w in self.ins)


def _estimate(node, inst, fpgapart: str, streams: tuple[int, ...]):
    """FINN's view of one node as configured (a NodeEstimate), or the exception FINN raised."""
    try:
        ins = tuple((i, int(inst.get_folded_input_shape(i)[-1]), int(inst.get_instream_width(i))) for i in streams)
        out = (int(inst.get_folded_output_shape()[-1]), int(inst.get_outstream_width()))
        if _is_hls(node) and hasattr(inst, "get_ap_int_max_w"):
            inst.get_ap_int_max_w()  # raises if a stream is wider than ap_int allows
        prepare = CODEGEN_PREPARE.get(node.op_type)
        if prepare is not None:
            prepare(inst)  # raises where FINN's hw_codegen would
        cycles = int(inst.get_exp_cycles())
        res = (int(inst.lut_estimation(fpgapart)), int(inst.bram_estimation(fpgapart)),
               int(inst.uram_estimation(fpgapart)), int(inst.dsp_estimation(fpgapart)))
    except Exception as e:  # FINN signals an illegal folding by raising (assert, FINN*Error, Exception)
        return e
    return NodeEstimate(cycles, res, out, ins)


def _swg_rtl_prepare(inst) -> None:
    """What ConvolutionInputGenerator_rtl.generate_hdl computes before writing any file: its
    implementation style (with FINN's SIMD rules) and that style's loop and buffer layout.
    FINN's parallel-window controller has no code for a 1x1 output map (math domain error)."""
    style = inst.select_impl_style()
    (inst.prepare_codegen_parallel if style == "parallel" else inst.prepare_codegen_default)()


# Specialized op -> its own code-generation preparation (no file written), run on every
# choice: a folding FINN's hw_codegen would reject is never offered.
CODEGEN_PREPARE: dict[str, Callable] = {
    "ConvolutionInputGenerator_rtl": _swg_rtl_prepare,
}


def _attribute_overlay(inst):
    """Serve this scratch instance's attributes from a dict; set_nodeattr writes only there.

    FINN's estimates read attributes through get_nodeattr, which rebuilds the op's
    attribute table and scans the node's attribute list on every call (about 100 us,
    ~10^5 calls for the table of a large layer). The values set are the Python types
    get_nodeattr returns (int, str), so the estimates see exactly what they would see
    on a node carrying them.
    """
    values = {}
    read = inst.get_nodeattr

    def get(name):
        if name not in values:
            values[name] = read(name)
        return values[name]

    def set_(name, value):
        values[name] = value

    inst.get_nodeattr, inst.set_nodeattr = get, set_
    return inst


def unit_table(model, unit: Unit, part: Part) -> Table:
    nodes = [model.get_node_from_name(n) for n in unit.nodes]
    streams = tuple(_stream_inputs(model, n) for n in nodes)
    key = (part.fpga_part, part.uram > 0, unit.rule, streams, tuple(_signature(n) for n in nodes))
    table = _TABLES.get(key)
    if table is None:
        table = _build_table(nodes, unit.rule, part, streams)
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return table


def _build_table(nodes, rule: str, part: Part, streams) -> Table:
    rows, first_error = _rows(nodes, rule, part, streams, impl=None)
    if len(nodes) == 1:
        for alt in ALTERNATIVES.get(nodes[0].op_type, ()):
            more, error = _rows(nodes, rule, part, streams, impl=alt)
            rows += more
            first_error = first_error or error
    if not rows:
        first = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
        raise UserError(f"layer {nodes[-1].name} ({nodes[-1].op_type}) has no folding FINN can generate code for "
                        f"[folding]: every choice breaks a FINN rule, the first: {first}")
    return _pareto(rows)


def _rows(nodes, rule: str, part: Part, streams, impl: str | None):
    """(rows, first error) of the rule's choices, on a scratch copy (switched to `impl`)."""
    scratch = []
    for n in nodes:  # estimates run on copies: the model is never modified here
        c = onnx.NodeProto()
        c.CopyFrom(n)
        if impl is not None:
            swap_impl(c, impl)
        scratch.append(c)
    insts = [_attribute_overlay(_inst(n)) for n in scratch]
    if rule == "fixed":
        choices = iter([tuple({} for _ in nodes)])
    else:
        choices = RULES.get(rule, _generic)(scratch, insts, part)
    rows, first_error = [], None
    for choice in choices:
        per_node = []
        for node, inst, attrs, st in zip(scratch, insts, choice, streams):
            for k, v in attrs.items():
                inst.set_nodeattr(k, v)
            est = _estimate(node, inst, part.fpga_part, st)
            if isinstance(est, Exception):
                first_error = first_error or est
                break
            per_node.append(est)
        else:
            tagged = [{IMPL: impl, **a} if impl is not None else a for a in choice]
            rows.append((tuple(per_node), tuple(tuple(a.items()) for a in tagged)))
    return rows, first_error


def _pareto(rows) -> Table:
    """Drop choices another choice beats or equals on cycles, every resource and stream width.

    FINN estimates some layers (padding, pooling) at zero cost whatever their folding:
    the stream width keeps such a layer from being made wider than its cycle budget
    needs. Among identical choices the first generated stays (deterministic).
    """
    cyc = np.array([max(e.cycles for e in est) for est, _ in rows], dtype=np.int64)
    res = np.array([[sum(e.res[i] for e in est) for i in range(len(RESOURCES))] for est, _ in rows],
                   dtype=np.int64).reshape(len(rows), len(RESOURCES))
    width = np.array([sum(e.width for e in est) for est, _ in rows], dtype=np.int64)
    cost = np.concatenate([res, width[:, None]], axis=1)
    order = np.lexsort((np.arange(len(rows)), cost.sum(axis=1), cyc))
    cyc, cost = cyc[order], cost[order]
    keep = np.ones(len(rows), dtype=bool)
    for i in range(len(rows)):
        # Every j < i has cycles <= cycles[i] (and, at equal cycles, a cost sum <= that
        # of i), so j dominates i if it is no worse in any resource or in width.
        if np.any(np.all(cost[:i] <= cost[i], axis=1) & keep[:i]):
            keep[i] = False
    idx = order[keep]
    return Table(cycles=cyc[keep], res=cost[keep, :len(RESOURCES)], width=cost[keep, len(RESOURCES)],
                 estimates=tuple(rows[i][0] for i in idx), attrs=tuple(rows[i][1] for i in idx))
