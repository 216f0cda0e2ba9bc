"""Fold a FINN dataflow graph to a throughput target on a given FPGA part.

`fold(model, part, clock_mhz, target_fps, budget)` works on the dataflow child model
after FINN's convert_to_hw, create_dataflow_partition and specialize_layers:

1. Every HW layer's legal foldings are listed and priced with FINN's own per-node
   estimates (compilers.finn.fold_space): cycles per frame, LUT, BRAM_18K, URAM, DSP.
2. With the cycle budget C = clock / target_fps, each layer takes one folding that needs
   at most C cycles, chosen together by one mixed-integer program (HiGHS, via scipy)
   for `OBJECTIVE`: the lowest binding share (the largest share of the part that any
   one of LUT, BRAM_18K, URAM, DSP takes), then the lowest sum of shares. The choices span
   PE/SIMD, LUTRAM/BRAM/URAM, LUT or DSP arithmetic (resType, and each MVAU as FINN's
   HLS or DSP-packing RTL MVU, fold_space.ALTERNATIVES) and the sliding window's
   parallel mode, so a design is bounded by the whole part, not by its LUTs alone.
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
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from compilers.finn import fold_space as fs
from compilers.finn.part import Part, require_part

RESOURCES = fs.RESOURCES
# What the search minimizes, as the report states it.
OBJECTIVE = ("within the budget of every resource at the target; then the lowest binding share "
             "(the largest share of the part that any one resource takes); then the lowest sum of the shares")
_DWC_ROUNDS = 4  # re-solves with the data-width converters' LUTs reserved
_NODE_LIMIT = 20_000  # branch-and-bound nodes per program: bounded and deterministic (no time limit)
_TIE_SHARES = 1e-3  # objective weight of the sum of shares (t itself has weight 1)


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
    # Data-parallel instances of this dataflow (fold(replicas=)): everything above is one
    # instance's (its target_fps and budget are the whole design's divided by replicas).
    replicas: int = 1
    # fold_best_fit: target_fps did not fit, this is the fastest design that does (why not: here)
    shortfall: str | None = None

    @property
    def achieved(self) -> float:
        """Reached fraction of the target fps."""
        return self.est_fps / self.target_fps

    @property
    def binding(self) -> tuple[str, float]:
        """The resource this design uses the largest share of the part of, and that share
        (all instances together)."""
        shares = {r: self.replicas * self.resources[r] / c for r, c in self.capacity.items() if c}
        worst = max(shares, key=shares.get)
        return worst, shares[worst]

    def summary(self) -> dict:
        """Totals over all instances."""
        k = self.replicas
        binding, share = self.binding
        return {"est_fps": k * self.est_fps, **{r: k * self.resources[r] for r in RESOURCES},
                "dwc_luts": k * self.dwc_luts, "fits": self.fits, "replicas": k, "binding": binding,
                "binding_share": share}

    def to_report(self) -> dict:
        """The report's `fpga` fields this module owns (docs/CONTRACTS.md): totals over all
        instances, and one instance's own figures under `instance` when there are several."""
        k = self.replicas
        out = {"part": self.part, "clock_mhz": self.clock_mhz, "est_fps": k * self.est_fps,
               "target_fps": k * self.target_fps, "resources": {r: k * v for r, v in self.resources.items()},
               "capacity": dict(self.capacity), "budget": k * self.budget, "replicas": k,
               "objective": OBJECTIVE, "binding": dict(zip(("resource", "share"), self.binding)),
               "per_layer": [layer.to_report() for layer in self.per_layer]}
        if self.shortfall:
            out["shortfall"] = self.shortfall
        if k > 1:
            out["instance"] = {"est_fps": self.est_fps, "target_fps": self.target_fps,
                               "resources": dict(self.resources), "budget": self.budget}
        return out


class FoldingInfeasible(UserError):
    """The target does not fit the part: carries the best fit for a caller to retry with."""

    def __init__(self, message: str, best_fps: float | None):
        super().__init__(message)
        self.best_fps = best_fps


# ---------------------------------------------------------------- public API


def fold(model, part: Part, clock_mhz: float | None, target_fps: float, budget: float = 0.7,
         replicas: int | str = 1) -> FoldingResult:
    """Fold `model` (FINN dataflow child, specialized) for `target_fps`; modifies it in place.

    `clock_mhz=None` means the part's default clock.
    replicas: K data-parallel instances of the dataflow (each image goes to one of them),
    each folded for target_fps / K within budget / K, so that together they reach the
    target within the budget; "auto": one instance if it reaches the target, else the
    fewest (up to MAX_REPLICAS) that do. One pipeline reads one input pixel per cycle,
    so beyond f_clk / pixels only replication goes faster. FINN builds one instance.
    """
    if replicas != 1:
        return _fold_replicated(model, part, clock_mhz, target_fps, budget, replicas)
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


def fold_best_fit(model, part: Part, clock_mhz: float | None, target_fps: float, budget: float = 0.7,
                  replicas: int | str = 1) -> FoldingResult:
    """`fold`, and where the target does not fit the part (resources), the fastest single
    pipeline that does, as FINN's SetFolding settles for the parallelism the layers allow: the
    result keeps the requested target_fps and says why it was not met (`shortfall`). A model
    that does not fit even fully folded, and data-parallel instances, are refused as by `fold`."""
    try:
        return fold(model, part, clock_mhz, target_fps, budget, replicas)
    except FoldingInfeasible as e:
        if e.best_fps is None or replicas != 1:
            raise
        result = fold(model, part, clock_mhz, e.best_fps, budget)
        return dataclasses.replace(result, target_fps=float(target_fps), shortfall=str(e))


MAX_REPLICAS = 16


def _fold_replicated(model, part, clock_mhz, target_fps, budget, replicas) -> FoldingResult:
    if replicas == "auto":
        counts, first = range(1, MAX_REPLICAS + 1), None
    elif isinstance(replicas, int) and not isinstance(replicas, bool) and 1 <= replicas <= MAX_REPLICAS:
        counts, first = [replicas], None
    else:
        raise UserError(f"fpga.replicas must be 'auto' or an integer in [1, {MAX_REPLICAS}], got {replicas!r}")
    for k in counts:
        trial = copy.deepcopy(model)
        try:
            result = fold(trial, part, clock_mhz, target_fps / k, budget / k)
        except FoldingInfeasible as e:
            first = first or e
            continue
        apply_folding(model, result.config)
        return dataclasses.replace(result, replicas=k)
    if len(counts) == 1:
        raise FoldingInfeasible(f"{counts[0]} instances: {first}", None)
    raise FoldingInfeasible(f"{first}; and {MAX_REPLICAS} data-parallel instances, each within "
                            f"{budget / MAX_REPLICAS:.1%} of the part, do not reach it either", None)


def pareto(model, part: Part, clock_mhz: float | None, target_fps: float, budget: float = 0.7,
           codegen: bool = False) -> list[dict]:
    """Ours and FINN's SetFolding (both on copies of the unfolded `model`) at a quarter,
    half and all of `target_fps`, and at the fastest single-pipeline design that fits the
    budget: fps against the binding resource share (FoldingResult.binding). codegen: each
    design also goes through FINN's code generation (`codegen_error`), in FINN's build dir."""
    part, clock_mhz = _part_and_clock(part, clock_mhz)
    try:
        fastest = fold(copy.deepcopy(model), part, clock_mhz, 1e9, budget).est_fps  # never reached
    except FoldingInfeasible as e:
        fastest = e.best_fps
    targets = sorted({round(target_fps * f) for f in (0.25, 0.5)} | {target_fps}
                     | ({math.floor(fastest)} if fastest else set()))
    rows, generated = [], {}  # FINN's code generation, once per distinct design
    for t in targets:
        row = {"target_fps": t}
        designs = []
        try:
            ours = fold(copy.deepcopy(model), part, clock_mhz, t, budget)
            row["qdeploy"] = ours.summary()
            designs.append((row["qdeploy"], ours.config))
        except FoldingInfeasible as e:
            row["qdeploy"] = {"fits": False, "reason": str(e)}
        theirs = finn_setfolding(model, part, clock_mhz, t, budget)
        row["setfolding"] = theirs.summary()
        designs.append((row["setfolding"], theirs.config))
        if codegen:
            for summary, config in designs:
                key = json.dumps(config, sort_keys=True, default=str)
                if key not in generated:
                    generated[key] = codegen_error(model, config, part, clock_mhz)
                summary["codegen_error"] = generated[key]
        rows.append(row)
    return rows


def codegen_error(model, config: dict, part: Part, clock_mhz: float) -> str | None:
    """None if FINN generates the HLS/RTL code of `model` folded by `config` (on a copy:
    InsertDWC, SpecializeLayers, PrepareIP, as the flow's hw_codegen step), else the first
    line of FINN's error. Writes into FINN's build dir (finn_build_dir)."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    from compilers.finn.hex_packing import fast_hex_packing

    folded = apply_folding(copy.deepcopy(model), config)
    try:
        with fast_hex_packing():
            folded.transform(InsertDWC()).transform(SpecializeLayers(part.fpga_part)).transform(
                PrepareIP(part.fpga_part, 1e3 / clock_mhz))
    except Exception as e:  # FINN signals what it cannot generate by raising
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None


def apply_folding(model, config: dict):
    """Set the folding `config` on the model's nodes in place (FINN's ApplyConfig), first
    switching the implementation of the layers whose entry names another (fs.IMPL); returns model."""
    from finn.transformation.general import ApplyConfig

    config = copy.deepcopy(config)
    for name, attrs in config.items():
        if isinstance(attrs, dict) and fs.IMPL in attrs:
            fs.swap_impl(model.get_node_from_name(name), attrs.pop(fs.IMPL))
    ApplyConfig(config).apply(model)
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

    def fit(self, budget_cycles: int):
        """Best choice within `budget_cycles` by OBJECTIVE: (picks, None) if it fits the
        budget of every resource, else (None, (resource, needed, share)) of its binding one.

        One mixed-integer program (HiGHS, through scipy): a binary x per unit and choice
        within the cycle budget, exactly one per unit, and the binding share t with
        sum(resource of the picks) <= t * limit for every resource; minimize t, then (with
        a weight too small to trade against t) the sum of the shares; each pick is then
        polished to the narrowest, slowest choice that costs no more (`_polish`).
        The data-width converters FINN inserts depend on neighbouring picks: their LUTs are
        reserved from the LUT limit and the program re-solved until the reserve covers them.
        """
        reserve, best = 0.0, None
        for _ in range(_DWC_ROUNDS):
            picks = self._solve(budget_cycles, reserve)
            if picks is None:  # only a resource the part lacks can make the program infeasible
                worst = int(np.argmin(self.limit))
                return None, (RESOURCES[worst], 0, float("inf"))
            total = self.totals(picks)
            util = total / np.maximum(self.limit, 1)
            score = (max(float(util.max()) - 1, 0.0), float(util.max()), float(util.sum()))
            if best is None or score < best[0]:
                best = (score, picks, total, util)
            dwc = float(self._dwc(picks))
            if dwc <= reserve:
                break
            reserve = dwc
        _, picks, total, util = best
        if np.all(total <= self.limit):
            return picks, None
        worst = int(np.argmax(util))
        return None, (RESOURCES[worst], int(total[worst]), float(util[worst]))

    def _solve(self, budget_cycles: int, lut_reserve: float):
        """The program's picks (one index per unit), or None when it is infeasible."""
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix

        counts = [int(np.searchsorted(t.cycles, budget_cycles, side="right")) for t in self.tables]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n = int(offsets[-1])  # choice variables; variable n is t
        res = np.concatenate([t.res[:k] for t, k in zip(self.tables, counts)]).astype(float)
        has = self.limit > 0
        share = res[:, has] / self.limit[has]
        cost = np.zeros(n + 1)
        cost[n] = 1.0
        cost[:n] = _TIE_SHARES * share.sum(axis=1)
        rows = lil_matrix((len(self.tables) + len(RESOURCES), n + 1))
        lo, hi = [], []
        for u in range(len(self.tables)):  # one choice per unit
            rows[u, offsets[u]:offsets[u + 1]] = 1
            lo.append(1)
            hi.append(1)
        for r in range(len(RESOURCES)):  # sum <= t * limit (a resource the part lacks: sum <= 0)
            row = len(self.tables) + r
            rows[row, :n] = res[:, r]
            rows[row, n] = -self.limit[r] if has[r] else 0.0
            lo.append(-np.inf)
            hi.append(-lut_reserve if r == 0 else 0.0)
        integrality = np.ones(n + 1)
        integrality[n] = 0
        out = milp(cost, constraints=LinearConstraint(rows.tocsr(), lo, hi), integrality=integrality,
                   bounds=Bounds(np.zeros(n + 1), np.concatenate([np.ones(n), [np.inf]])),
                   options={"node_limit": _NODE_LIMIT, "mip_rel_gap": 1e-4})
        if out.x is None:
            if out.status == 2:  # infeasible: only a resource the part lacks can make it so
                return None
            # the node limit reached before any integer solution (not seen in practice): the
            # slowest choice of every unit within the budget, the polish and the checks still apply
            return [self._polish(t, k - 1, k) for t, k in zip(self.tables, counts)]
        x = out.x[:n]
        picks = [int(np.argmax(x[offsets[u]:offsets[u + 1]])) for u in range(len(self.tables))]
        return [self._polish(t, p, k) for t, p, k in zip(self.tables, picks, counts)]

    def _polish(self, table, pick: int, count: int) -> int:
        """Among the unit's choices within the cycle budget that need no more of any resource
        than `pick`, the narrowest streams, then the least resources, then the slowest: no
        parallelism is bought that the design does not need (FINN's estimates call some of it
        free, e.g. up to 4 PEs share an RTL MVU's DSPs)."""
        ok = np.flatnonzero(np.all(table.res[:count] <= table.res[pick], axis=1))
        share = table.res[ok] @ (1.0 / np.maximum(self.limit, 1))
        return int(ok[np.lexsort((-table.cycles[ok], share, table.width[ok]))[0]])

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
        picks, _ = search.fit(values[mid])
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
