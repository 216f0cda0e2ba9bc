"""Fold a FINN dataflow graph to a throughput target on a given FPGA part.

`fold(model, part, clock_mhz, target_fps, budget)` works on the dataflow child model
after FINN's convert_to_hw, create_dataflow_partition and specialize_layers:

1. Every HW layer's legal foldings are listed and priced with FINN's own per-node
   estimates (compilers.finn.fold_space): cycles per frame, LUT, BRAM_18K, URAM, DSP.
2. With the cycle budget C = clock / target_fps, each layer takes its cheapest folding
   that needs at most C cycles. "Cheapest" prices each resource by the part's budget of
   it (LUT / (0.7 * LUTs), ...), and a resource gets dearer as the design fills it
   (marginal cost of u + u^2 at utilization u) or breaks its budget; the layers choose
   again at the new prices for `_ROUNDS` rounds and the best round is kept (a
   Lagrangian relaxation of this multiple-choice knapsack). Small designs thus get the
   plainly cheapest folding, big ones a balance of LUT, LUTRAM, BRAM and DSP.
3. The total, plus the data-width converters FINN will insert between layers whose
   stream widths now differ (FINN's StreamingDataWidthConverter estimate), must stay
   within capacity * budget for every resource. If it does not, the smallest cycle
   budget that fits is found by bisection over the layers' cycle counts and a
   `FoldingInfeasible` (a UserError) names the resource and the best fit in fps.
4. The folding is applied to the model in place with FINN's ApplyConfig, and the
   result is what FINN's estimates say about the folded model (`summarize`).

The estimates are FINN's analytical models, not synthesis results; FIFOs (sized later)
are not included.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from compilers.finn import fold_space as fs
from compilers.finn.part import Part, require_part

RESOURCES = fs.RESOURCES
_ROUNDS = 40  # re-weighting rounds per cycle budget
_ZERO_CAPACITY_WEIGHT = 1e9  # a resource the part lacks: usable only if nothing else is


@dataclass(frozen=True)
class LayerFold:
    name: str
    op_type: str
    cycles: int
    resources: dict  # {LUT, BRAM_18K, URAM, DSP}
    attrs: dict  # the folding attributes as set on the node

    def to_report(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "cycles": self.cycles, **self.resources}


@dataclass(frozen=True)
class FoldingResult:
    part: str
    fpga_part: str
    clock_mhz: float
    target_fps: float
    budget: float
    config: dict  # FINN folding config: {"Defaults": {}, node name: {attr: value}}
    est_fps: float  # clock / slowest layer's cycles
    max_cycles: int
    bottleneck: str  # name of the slowest layer
    resources: dict  # total over layers plus data-width converters
    dwc_luts: int  # LUTs of the data-width converters FINN will insert (in `resources`)
    capacity: dict
    limits: dict  # capacity * budget
    per_layer: tuple = field(default_factory=tuple)  # LayerFold, in graph order
    fits: bool = True

    @property
    def achieved(self) -> float:
        """Reached fraction of the target fps."""
        return self.est_fps / self.target_fps

    def summary(self) -> dict:
        return {"est_fps": self.est_fps, "LUT": self.resources["LUT"], "BRAM_18K": self.resources["BRAM_18K"],
                "URAM": self.resources["URAM"], "DSP": self.resources["DSP"], "dwc_luts": self.dwc_luts,
                "fits": self.fits}

    def to_report(self) -> dict:
        """The report's `fpga` fields this module owns (docs/CONTRACTS.md)."""
        return {"part": self.part, "clock_mhz": self.clock_mhz, "est_fps": self.est_fps,
                "target_fps": self.target_fps, "resources": dict(self.resources),
                "capacity": dict(self.capacity), "budget": self.budget,
                "per_layer": [layer.to_report() for layer in self.per_layer]}


class FoldingInfeasible(UserError):
    """The target does not fit the part: carries the best fit for a caller to retry with."""

    def __init__(self, message: str, best_fps: float | None):
        super().__init__(message)
        self.best_fps = best_fps


# ---------------------------------------------------------------- public API


def fold(model, part: Part, clock_mhz: float | None, target_fps: float, budget: float = 0.7) -> FoldingResult:
    """Fold `model` (FINN dataflow child, specialized) for `target_fps`; modifies it in place.

    `clock_mhz=None` means the part's default clock.
    """
    part, clock_mhz = _part_and_clock(part, clock_mhz)
    _check_args(clock_mhz, target_fps, budget)
    units = _hw_units(model)
    tables = [fs.unit_table(model, u, part) for u in units]
    limits = _limits(part, budget)
    search = _Search(model, units, tables, limits)
    clock_hz = clock_mhz * 1e6
    budget_cycles = _cycle_budget(clock_hz, target_fps)
    min_cycles = max(int(t.cycles[0]) for t in tables)

    picks, over = search.fit(budget_cycles) if budget_cycles >= min_cycles else (None, None)
    if picks is None:
        raise _infeasible(search, part, clock_hz, target_fps, budget, budget_cycles, min_cycles, over)
    config = search.config(picks)
    apply_folding(model, config)
    result = summarize(model, part, clock_mhz, target_fps, budget, config)
    predicted = (search.max_cycles(picks), [int(x) for x in search.totals(picks)])
    if (result.max_cycles, [result.resources[r] for r in RESOURCES]) != predicted or not result.fits:
        raise RuntimeError(f"folding bookkeeping disagrees with FINN's estimates of the folded model: "
                           f"{predicted} predicted, {result.max_cycles} cycles and {result.resources} found")
    return result


def apply_folding(model, config: dict):
    """Set the folding `config` on the model's nodes in place (FINN's ApplyConfig); returns model."""
    from finn.transformation.general import ApplyConfig

    ApplyConfig(copy.deepcopy(config)).apply(model)
    return model


def finn_setfolding(model, part: Part, clock_mhz: float | None, target_fps: float,
                    budget: float = 0.7) -> FoldingResult:
    """FINN's own SetFolding (builder defaults) on a copy of `model`, summarized like `fold`.

    For a side-by-side comparison in reports; the result's `fits` says whether it stays
    within the budget, and `model` is left unchanged.
    """
    from finn.transformation.fpgadataflow.set_folding import SetFolding

    part, clock_mhz = _part_and_clock(part, clock_mhz)
    _check_args(clock_mhz, target_fps, budget)
    folded = copy.deepcopy(model)
    finn_log = logging.getLogger("finn_logger")  # SetFolding warns per layer; its summary is what we keep
    level, finn_log.level = finn_log.level, logging.ERROR
    try:
        folded = folded.transform(SetFolding(_cycle_budget(clock_mhz * 1e6, target_fps), mvau_wwidth_max=36,
                                             two_pass_relaxation=True))
    finally:
        finn_log.setLevel(level)
    return summarize(folded, part, clock_mhz, target_fps, budget, config_of(folded))


def config_of(model) -> dict:
    """The folding attributes currently set on the model's HW nodes, as a FINN config."""
    config = {"Defaults": {}}
    for node in model.graph.node:
        if fs.is_hw(node):
            inst = fs._inst(node)
            types = inst.get_nodeattr_types()
            attrs = {a: inst.get_nodeattr(a) for a in fs.SEARCHED_ATTRS if a in types}
            if attrs:
                config[node.name] = attrs
    return config


def summarize(model, part: Part, clock_mhz: float, target_fps: float, budget: float, config: dict) -> FoldingResult:
    """What FINN's estimates say about `model` as it is folded now."""
    layers = []
    for node in model.graph.node:
        if not fs.is_hw(node):
            continue
        inst = fs._inst(node)
        attrs = config.get(node.name, {})
        res = {"LUT": int(inst.lut_estimation(part.fpga_part)), "BRAM_18K": int(inst.bram_estimation(part.fpga_part)),
               "URAM": int(inst.uram_estimation(part.fpga_part)), "DSP": int(inst.dsp_estimation(part.fpga_part))}
        layers.append(LayerFold(node.name, node.op_type, int(inst.get_exp_cycles()), res, dict(attrs)))
    dwc = sum(_dwc_luts(*w) for w in _mismatched_widths(model))
    total = {r: sum(layer.resources[r] for layer in layers) for r in RESOURCES}
    total["LUT"] += dwc
    limits = _limits(part, budget)
    slowest = max(layers, key=lambda layer: layer.cycles)  # first of equals, like FINN's analysis
    return FoldingResult(
        part=part.name, fpga_part=part.fpga_part, clock_mhz=float(clock_mhz), target_fps=float(target_fps),
        budget=float(budget), config=config, est_fps=clock_mhz * 1e6 / slowest.cycles, max_cycles=slowest.cycles,
        bottleneck=slowest.name, resources=total, dwc_luts=int(dwc), capacity=part.capacity(), limits=limits,
        per_layer=tuple(layers), fits=all(total[r] <= limits[r] for r in RESOURCES))


# ---------------------------------------------------------------- search


class _Search:
    """Per-layer choice under a cycle budget, re-weighted until the totals fit."""

    def __init__(self, model, units, tables, limits):
        self.units, self.tables = units, tables
        self.limit = np.array([limits[r] for r in RESOURCES], dtype=float)
        where = {name: (u, k) for u, unit in enumerate(units) for k, name in enumerate(unit.nodes)}
        self.edges = []  # (producer (unit, pos), consumer (unit, pos), consumer input index)
        for producer, consumer, idx in _hw_edges(model):
            if producer in where and consumer in where:
                self.edges.append((where[producer], where[consumer], idx))

    def fit(self, budget_cycles: int, settle: bool = True):
        """Best choice within `budget_cycles`: (picks, None) if it fits, else (None, overuse).

        Each round every layer takes its cheapest choice at the current resource prices.
        A resource's price is 1/limit times the marginal cost of f(u) = u + u^2 at its
        average utilization u so far (resources get dearer as they fill up, so a big
        design balances LUTRAM against BRAM and LUT against DSP instead of filling one),
        times a factor raised while the resource is over budget. The best round wins:
        within budget first, then the lowest sum of f(u). With settle=False the first
        round that fits is taken (enough to decide feasibility).
        """
        mult = np.ones(len(RESOURCES))
        mean_util = np.zeros(len(RESOURCES))
        best = None
        for k in range(_ROUNDS):
            price = np.where(self.limit > 0, mult * (1 + 2 * mean_util) / np.maximum(self.limit, 1),
                             _ZERO_CAPACITY_WEIGHT)
            picks = [self._cheapest(t, budget_cycles, price) for t in self.tables]
            total = self.totals(picks)
            util = np.where(self.limit > 0, total / np.maximum(self.limit, 1), np.where(total > 0, np.inf, 0))
            capped = np.minimum(util, 10.0)
            score = (max(float(util.max()) - 1, 0.0), float(np.sum(capped + capped**2)))
            if best is None or score < best[0]:
                best = (score, picks, total, util)
            if score[0] == 0 and not settle:
                break
            mean_util = (mean_util * k + capped) / (k + 1)
            mult = np.where(util > 1, mult * np.minimum(4.0, np.maximum(1.25, util)), mult)
        _, picks, total, util = best
        if np.all(util <= 1):
            return picks, None
        worst = int(np.argmax(util))
        return None, (RESOURCES[worst], int(total[worst]), float(util[worst]))

    @staticmethod
    def _cheapest(table, budget_cycles, weights) -> int:
        n = int(np.searchsorted(table.cycles, budget_cycles, side="right"))
        cost = table.res[:n] @ weights
        # Cheapest; among equally cheap the narrowest streams, then the fastest.
        return int(np.lexsort((np.arange(n), table.width[:n], cost))[0])

    def totals(self, picks) -> np.ndarray:
        total = np.sum([t.res[p] for t, p in zip(self.tables, picks)], axis=0).astype(float)
        total[0] += self._dwc(picks)
        return total

    def max_cycles(self, picks) -> int:
        return max(int(t.cycles[p]) for t, p in zip(self.tables, picks))

    def config(self, picks) -> dict:
        config = {"Defaults": {}}
        for unit, table, p in zip(self.units, self.tables, picks):
            for name, attrs in zip(unit.nodes, table.attrs[p]):
                if attrs:
                    config[name] = {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in attrs}
        return config

    def _dwc(self, picks) -> int:
        luts = 0
        for (pu, pk), (cu, ck), idx in self.edges:
            out = self.tables[pu].estimates[picks[pu]][pk].out
            inp = next(i for i in self.tables[cu].estimates[picks[cu]][ck].ins if i[0] == idx)
            if out[0] != inp[1]:  # folded last dimensions differ: FINN's InsertDWC condition
                luts += _dwc_luts(out[1], inp[2])
        return luts

    def cycle_values(self, lowest: int) -> list[int]:
        values = set()
        for t in self.tables:
            values.update(int(c) for c in t.cycles if c >= lowest)
        return sorted(values)


def _infeasible(search, part, clock_hz, target_fps, budget, budget_cycles, min_cycles, over) -> FoldingInfeasible:
    """The error for a target that does not fit, with the best fps that does."""
    values = search.cycle_values(max(budget_cycles, min_cycles))
    lo, hi, best = 0, len(values) - 1, None
    while lo <= hi:  # smallest cycle budget that fits (fitting is monotone in the budget)
        mid = (lo + hi) // 2
        picks, _ = search.fit(values[mid], settle=False)
        if picks is not None:
            best, hi = values[mid], mid - 1
        else:
            lo = mid + 1
    # fold(best_fps) gets the cycle budget `best` back (_cycle_budget), so it fits.
    best_fps = math.floor(clock_hz / best) if best is not None else None
    if over is None:  # beyond the most parallel folding of some layer
        slowest = max(range(len(search.tables)), key=lambda i: int(search.tables[i].cycles[0]))
        fastest = search.tables[slowest].estimates[0]  # per node of the unit, at its fastest
        name = search.units[slowest].nodes[max(range(len(fastest)), key=lambda k: fastest[k].cycles)]
        what = (f"target {target_fps:g} fps is beyond what {name} reaches fully parallel "
                f"({min_cycles:,} cycles per frame, {clock_hz / min_cycles:,.0f} fps at {clock_hz / 1e6:g} MHz)")
    else:
        res, needed, _ = over
        what = (f"target {target_fps:g} fps does not fit {part.name} within {budget:.0%} of {res} "
                f"(needs {needed:,} of {int(budget * part.capacity()[res]):,})")
    if best_fps is None:
        return FoldingInfeasible(f"{what}; the model does not fit even fully folded: choose a larger part "
                                 f"or a smaller model", None)
    return FoldingInfeasible(f"{what}; best fit: {best_fps:,} fps", best_fps)


# ---------------------------------------------------------------- helpers


def _part_and_clock(part: Part, clock_mhz: float | None) -> tuple[Part, float]:
    part = require_part(part)
    return part, part.default_clock_mhz if clock_mhz is None else clock_mhz


def _check_args(clock_mhz, target_fps, budget):
    if not clock_mhz or clock_mhz <= 0:
        raise UserError(f"fpga clock must be positive MHz, got {clock_mhz!r}")
    if not target_fps or target_fps <= 0:
        raise UserError(f"fpga.target_fps must be positive, got {target_fps!r}")
    if not 0 < budget <= 1:
        raise UserError(f"fpga.budget must be in (0, 1], got {budget!r}")


def _cycle_budget(clock_hz: float, target_fps: float) -> int:
    # The relative epsilon keeps floor(clock / (clock / n)) == n despite float rounding.
    return max(1, math.floor(clock_hz / target_fps * (1 + 1e-12)))


def _limits(part: Part, budget: float) -> dict:
    return {r: budget * c for r, c in part.capacity().items()}


def _hw_units(model):
    names = [n.name for n in model.graph.node]
    if len(set(names)) != len(names):
        raise ValueError("fold() needs unique node names (FINN's GiveUniqueNodeNames)")
    if any(n.op_type == "StreamingDataflowPartition" for n in model.graph.node):
        raise ValueError("fold() takes the dataflow child model, not the parent with a StreamingDataflowPartition")
    units = fs.find_units(model)
    if not units:
        raise ValueError("fold() found no specialized HW layers (*_hls / *_rtl): run specialize_layers first")
    return units


def _hw_edges(model):
    """(producer, consumer, consumer input index) for every stream between two HW nodes."""
    for node in model.graph.node:
        if not fs.is_hw(node):
            continue
        for out in node.output:
            for cons in model.find_consumers(out) or []:
                if fs.is_hw(cons):
                    yield node.name, cons.name, list(cons.input).index(out)


def _mismatched_widths(model):
    """(in width, out width) of each data-width converter InsertDWC would add."""
    for producer, consumer, idx in _hw_edges(model):
        p = fs._inst(model.get_node_from_name(producer))
        c = fs._inst(model.get_node_from_name(consumer))
        if p.get_folded_output_shape()[-1] != c.get_folded_input_shape(idx)[-1]:
            yield int(p.get_outstream_width()), int(c.get_instream_width(idx))


_DWC_LUTS: dict[tuple[int, int], int] = {}


def _dwc_luts(in_width: int, out_width: int) -> int:
    """FINN's LUT estimate of a StreamingDataWidthConverter between the two widths."""
    key = (in_width, out_width)
    if key not in _DWC_LUTS:
        from onnx import helper

        node = helper.make_node("StreamingDataWidthConverter", ["i"], ["o"], domain="finn.custom_op.fpgadataflow",
                                backend="fpgadataflow", inShape=[1, in_width * out_width],
                                outShape=[1, in_width * out_width], inWidth=in_width, outWidth=out_width,
                                dataType="BINARY")
        _DWC_LUTS[key] = int(fs._inst(node).lut_estimation(""))
    return _DWC_LUTS[key]
