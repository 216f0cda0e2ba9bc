"""Per-stage parity: every saved intermediate model against the reference logits.

Each stage model is executed in FINN's python mode (see execute.py: FINN's own node
implementations, batched) on the whole sample set of uint8 pixels [N, C, H, W]. A
post-partition stage runs inside the parent graph (host ops + that stage's partition).

A graph with several outputs (e.g. decision logits and a segmentation map) is compared
output by output, against one reference array per output (graph order): each output has
its own metrics in `outputs`; the stage's max_abs_diff / max_abs_diff_rel are the worst output's,
argmax_agreement is that of output 0 (the logits), and the stage is exact when every
output is.

Metrics per stage, on float logits:
- max_abs_diff:  max |stage - reference|;
- max_abs_diff_rel: max_abs_diff / logit scale, the scale being max |reference|;
- argmax_agreement: fraction of samples whose stage argmax is a reference argmax
                 (a reference tie within the tolerance counts as agreement);
- exact:         max_abs_diff_rel <= core.compare.BIT_EXACT_REL (float rounding only: the integer datapath
                 matches and only the final float scale may round differently).

A stage whose python-mode graph is identical to an earlier stage's (`semantic_digest`:
specialization, estimate annotations and code generation do not change it) reuses
that stage's result (`same_as`) instead of executing again.

When a stage is not exact, `first_divergence` names the first node (in execution
order) whose integer output on the worst sample matches no tensor of the previous
good stage (same name first, else by value: steps rename tensors).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.compare import BIT_EXACT_REL, compare

# two intermediate tensors "match" (first_divergence) within this share of their scale;
# logits are compared by core.compare (BIT_EXACT_REL)
MATCH_REL = 1e-5


@dataclass(frozen=True)
class Stage:
    name: str
    model_path: Path
    parent_path: Optional[Path] = None  # set for stages after create_dataflow_partition


@dataclass
class StageParity:
    stage: str
    n: int
    argmax_agreement: float
    max_abs_diff: float
    max_abs_diff_rel: float
    exact: bool
    seconds: float
    first_divergence: Optional[dict] = None
    executor_check: Optional[float] = None  # max |batched - FINN execute_onnx| / scale on a few samples
    executor: str = "batched"  # "per-sample" when the batched executor disagreed with FINN
    same_as: Optional[str] = None  # an earlier stage with the same python-mode graph: its result
    outputs: Optional[list] = None  # per graph output (several outputs only): compare() metrics


    @property
    def first_divergent_node(self) -> Optional[str]:
        """The first divergent node in words, e.g. "MultiThreshold_3 (MultiThreshold): ..."."""
        fd = self.first_divergence
        if not fd:
            return None
        return f"{fd.get('node')} ({fd.get('op_type', '?')}) in stage {self.stage}: {fd.get('detail', '')}".rstrip(": ")

    def to_dict(self) -> dict:
        return {**asdict(self), "first_divergent_node": self.first_divergent_node}


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


def stage_executor(stage: Stage, reference_mode: bool = False):
    from compilers.finn.execute import Executor

    model = _load(stage.model_path)
    if stage.parent_path is None:
        return Executor(model, reference_mode=reference_mode)
    return Executor(_load(stage.parent_path), partition=model, reference_mode=reference_mode)


def run_stage(stage: Stage, pixels: np.ndarray, batch: int = 64, reference_mode: bool = False) -> np.ndarray:
    """Logits of one stage for uint8 pixels [N, C, H, W] (float32 [N, classes]): its first output."""
    return run_outputs(stage, pixels, batch, reference_mode)[0]


def run_outputs(stage: Stage, pixels: np.ndarray, batch: int = 64, reference_mode: bool = False) -> list[np.ndarray]:
    """Every graph output of one stage for uint8 pixels, in graph order, each as [N, -1]."""
    ex = stage_executor(stage, reference_mode)
    (name,) = ex.input_names
    x = pixels.astype(np.float32)
    chunks = [ex.run({name: x[i : i + batch]}) for i in range(0, len(x), batch)]
    return [np.concatenate([c[o] for c in chunks], axis=0).reshape(len(x), -1) for o in ex.output_names]


def as_outputs(reference) -> list[np.ndarray]:
    """The reference as a list of [N, -1] arrays: one array (one output) or one per output."""
    if isinstance(reference, (list, tuple)):
        return [np.asarray(r).reshape(len(r), -1) for r in reference]
    return [np.asarray(reference)]


def compare_outputs(outputs: Sequence[np.ndarray], reference) -> tuple[dict, list[dict]]:
    """compare() per output; the combined metrics (worst output; argmax of output 0) and the list."""
    refs = as_outputs(reference)
    if len(outputs) != len(refs):
        raise ValueError(f"the stage has {len(outputs)} outputs but {len(refs)} reference arrays were given")
    per = [compare(o, r) for o, r in zip(outputs, refs)]
    worst = max(range(len(per)), key=lambda k: per[k]["max_abs_diff_rel"])
    combined = dict(per[worst], argmax_agreement=per[0]["argmax_agreement"], exact=all(m["exact"] for m in per),
                    output=worst)
    return combined, per


def check_stages(stages: Sequence[Stage], pixels: np.ndarray, reference: np.ndarray, batch: int = 64,
                 localize: bool = True, executor_samples: int = 2) -> list[StageParity]:
    """Parity of every stage, in this process; the first divergent node for stages that are not exact.

    Each stage's batched execution is first compared with FINN's execute_onnx on
    `executor_samples` samples; if they disagree the stage runs FINN's per-sample code.
    """
    with StageChecker(pixels, reference, batch, localize, executor_samples, background=False) as checker:
        for stage in stages:
            checker.add(stage)
        return checker.results()


class StageChecker:
    """check_stages for stages handed over one at a time (`add`, in flow order) while the
    flow goes on.

    With `background` the stages execute in one worker process, in order, beside the next
    FINN step: the flow's transformations and FINN's python execution each keep one core
    busy, and the machine has two. The worker starts at the first stage handed over once
    `background_after_s` have passed (it takes the stages queued until then): a flow that is
    over sooner (a small model) checks its stages here, after the flow, without the cost
    of starting a process. The worker is spawned (no state forked from a parent
    that holds torch's thread pools) with one BLAS/OpenMP thread, so the two processes do
    not fight over cores. `results()` waits for the worker and localizes divergences here.
    A worker that dies (BrokenProcessPool) costs time, not results: its stages run here.
    Leaving the `with` block (an error, Ctrl-C, SIGTERM) terminates the worker at once.
    """

    def __init__(self, pixels: np.ndarray, reference, batch: int = 64, localize: bool = True,
                 executor_samples: int = 2, background: bool = True, background_after_s: float = 0.0):
        self._pixels, self._localize, self._background = pixels, localize, background
        self._start_by = time.perf_counter() + background_after_s
        self._args = (pixels, reference, batch, executor_samples)
        self._stages: list[Stage] = []
        self._pending: list = []  # per stage: a Future, the measurement itself, or None (not measured yet)
        self._submitted = 0  # stages handed to the worker so far (the first ones, in order)
        self._here: Optional[_Measurer] = None
        self._pool = None

    def __enter__(self) -> "StageChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, stage: Stage) -> None:
        self._stages.append(stage)
        if not self._background:
            self._pending.append(self._measure_here(stage))
            return
        self._pending.append(None)  # measured here, in results(), unless a worker takes it
        if self._pool is None and time.perf_counter() >= self._start_by:
            self._pool = _start_worker(self._args)
        while self._pool is not None and self._submitted < len(self._stages):
            try:
                self._pending[self._submitted] = self._pool.submit(_worker_measure, self._stages[self._submitted])
            except BrokenProcessPool:
                return
            self._submitted += 1

    def results(self) -> list[StageParity]:
        measured = []
        for stage, item in zip(self._stages, self._pending):
            if hasattr(item, "result"):
                try:
                    item = item.result()
                except BrokenProcessPool:
                    item = None
            measured.append(self._measure_here(stage) if item is None else item)
        self.close()
        results: list[StageParity] = []
        by_name: dict[str, StageParity] = {}
        last_good: Optional[Stage] = None
        for stage, (res, worst_sample, output) in zip(self._stages, measured):
            if res.same_as:
                res = dataclasses.replace(res, first_divergence=by_name[res.same_as].first_divergence)
            elif not res.exact and self._localize:
                res.first_divergence = first_divergence(stage, last_good, self._pixels[worst_sample : worst_sample + 1],
                                                        output=output)
                res.first_divergence["sample"] = worst_sample
            results.append(res)
            by_name[stage.name] = res
            if res.exact:
                last_good = stage
        return results

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)

    def _measure_here(self, stage: Stage) -> tuple:
        if self._here is None:
            self._here = _Measurer(*self._args)
        return self._here(stage)


class _Measurer:
    """Measures stages in order (StageParity without localisation, the worst sample, the
    worst output); a stage whose python-mode graph is an earlier stage's reuses its result."""

    def __init__(self, pixels, reference, batch: int, executor_samples: int):
        self.pixels, self.reference, self.batch, self.executor_samples = pixels, reference, batch, executor_samples
        self.seen: dict[str, tuple] = {}

    def __call__(self, stage: Stage) -> tuple:
        t0 = time.perf_counter()
        digest = semantic_digest(stage)
        if digest in self.seen:
            earlier, worst_sample, output = self.seen[digest]
            return (dataclasses.replace(earlier, stage=stage.name, same_as=earlier.same_as or earlier.stage,
                                        seconds=round(time.perf_counter() - t0, 3)), worst_sample, output)
        xcheck, mode = None, "batched"
        if self.executor_samples:
            xcheck = check_executor(stage, self.pixels[: self.executor_samples])
            if xcheck > BIT_EXACT_REL:
                mode = "per-sample"
        outs = run_outputs(stage, self.pixels, batch=self.batch, reference_mode=mode == "per-sample")
        m, per = compare_outputs(outs, self.reference)
        res = StageParity(stage.name, len(self.pixels), m["argmax_agreement"], m["max_abs_diff"],
                          m["max_abs_diff_rel"], m["exact"], round(time.perf_counter() - t0, 3), None, xcheck, mode)
        if len(per) > 1:
            res.outputs = [{k: v for k, v in p.items() if k != "worst_sample"} for p in per]
        self.seen[digest] = (res, m["worst_sample"], m["output"])
        return self.seen[digest]


# the worker's one thread per math library (read when each library loads, i.e. at spawn)
_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_WORKER: Optional[_Measurer] = None


def _start_worker(args: tuple):
    """One spawned worker process holding a _Measurer of `args`, started now."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                   initargs=args)
        pool.submit(int)  # a spawn-context pool starts its process inside submit: it reads the environment now
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return pool


def _worker_init(*args) -> None:
    global _WORKER
    import torch

    from compilers.finn.env import ensure_finn

    torch.set_num_threads(1)
    ensure_finn()
    _WORKER = _Measurer(*args)


def _worker_measure(stage: Stage) -> tuple:
    return _WORKER(stage)


# Node attributes that record where generated code lives or what an estimate said: they
# do not change what a node computes in python mode.
_INFORMATIONAL = {"code_gen_dir_ipgen", "ipgen_path", "ip_path", "ip_vlnv", "gen_top_module", "cycles_estimate",
                  "code_gen_dir_cppsim", "executable_path", "res_estimate", "res_hls", "res_synth"}


def semantic_digest(stage: Stage) -> str:
    """Hash of what python-mode execution of `stage` computes: the generic graph without
    node names and informational attributes (plus the parent graph, for partitions).

    Steps that only specialize (HLS/RTL variants run as their generic op), annotate
    estimates or record generated code give the same digest as the stage before them.
    """
    from compilers.finn.execute import to_generic

    h = hashlib.sha256()
    for path in (stage.model_path, stage.parent_path):
        if path is None:
            continue
        graph = copy.deepcopy(to_generic(_load(path)).graph)
        for node in graph.node:
            node.name = ""
            keep = [a for a in node.attribute if a.name not in _INFORMATIONAL and a.name != "model"]
            del node.attribute[:]
            node.attribute.extend(keep)
        h.update(graph.SerializeToString(deterministic=True))
    return h.hexdigest()


def full_context(stage: Stage, sample: np.ndarray) -> tuple[dict, list, dict, set]:
    """All tensors of one stage on one sample, its nodes in execution order, dtypes, constants."""
    ex = stage_executor(stage)
    (name,) = ex.input_names
    ctx = ex.run({name: sample.astype(np.float32)}, full=True)
    nodes, dtypes, consts = [], {}, set()
    for e in [ex, *ex._children.values()]:
        nodes += [n for n in e.graph.node if n.op_type != "StreamingDataflowPartition"]
        dtypes.update(e._dtypes)
        consts.update(e._constants)
    return ctx, nodes, dtypes, consts


# Nodes that only move, copy or pad values: a lowered graph has them where the previous
# stage has none, so their outputs are not compared.
_REARRANGE = {
    "Im2Col", "ConvolutionInputGenerator", "FMPadding", "Pad", "Transpose", "Reshape", "Flatten",
    "DuplicateStreams", "Identity", "Squeeze", "Unsqueeze", "StreamingDataWidthConverter",
    "StreamingFIFO", "Shuffle", "InnerShuffle", "OuterShuffle",
}


def first_divergence(stage: Stage, good: Optional[Stage], sample: np.ndarray, output: int = 0) -> dict:
    """The first node of `stage` whose output matches no tensor of the previous good stage.

    Integer-typed outputs are compared: by name when the good stage has a tensor of
    that name, else against every good tensor of the same size. Layout changes
    (NCHW <-> NHWC) are allowed, and a constant factor when exactly one side is a float
    tensor (a scale the step folded in or moved out). Float outputs are skipped: steps
    legitimately move scales through them.
    """
    if good is None:
        return {"node": None, "compared_with": None,
                "detail": "the first stage already differs from the reference logits: the QONNX export "
                          "does not compute the reference model (or the reference is not of this model)"}
    ctx, nodes, dtypes, consts = full_context(stage, sample)
    gctx, _, gdtypes, gconsts = full_context(good, sample)
    pool = {t: np.asarray(v, dtype=np.float64) for t, v in gctx.items()
            if t and v is not None and t not in gconsts and np.size(v) > 0}
    by_size: dict[int, list[str]] = {}
    for t, v in pool.items():
        by_size.setdefault(v.size, []).append(t)
    for node in nodes:
        if node.op_type in _REARRANGE:
            continue
        for t in node.output:
            if not t or t not in ctx or not _is_int(dtypes.get(t)):
                continue
            a = np.asarray(ctx[t], dtype=np.float64)
            if t in pool and pool[t].size == a.size:
                cands = [t]
            else:  # steps rename tensors: a name can come back on another tensor (MatMul_0 of the head)
                cands = by_size.get(a.size, [])
            if any(_matches(_as_dtype_of(a, dtypes.get(t), gdtypes.get(c)), pool[c], scale_ok=not _is_int(gdtypes.get(c)))
                   for c in cands):
                continue
            hit = {"node": node.name or f"<unnamed {node.op_type}>", "op_type": node.op_type, "tensor": t,
                   "compared_with": good.name}
            if t in pool and pool[t].shape == a.shape:
                hit["max_abs_diff"] = float(np.max(np.abs(a - pool[t])))
                hit["elements_differing"] = int(np.count_nonzero(a != pool[t]))
                hit["detail"] = f"differs from {good.name}'s tensor of the same name"
            else:
                hit["detail"] = f"no tensor of {good.name} has these values"
            return hit
    return _scale_divergence(stage, good, ctx, gctx, nodes, pool, by_size, output)


def _scale_divergence(stage, good, ctx, gctx, nodes, pool, by_size, output: int = 0) -> dict:
    """All integer tensors match: find the first node whose output is off by the same
    constant factor as the stage's output (a scale lost, doubled or mis-absorbed)."""
    out_name = stage_executor(stage).output_names[output]
    good_out = np.asarray(gctx[stage_executor(good).output_names[output]], dtype=np.float64)
    out = np.asarray(ctx[out_name], dtype=np.float64)
    factor = _fit(out, good_out)
    base = {"node": None, "compared_with": good.name}
    if factor is None or abs(factor - 1.0) < 1e-6:
        return dict(base, detail="every integer tensor matches the previous good stage; the difference "
                                 "arises in the float nodes around them")
    for node in nodes:
        if node.op_type in _REARRANGE:
            continue
        for t in node.output:
            if not t or t not in ctx:
                continue
            a = np.asarray(ctx[t], dtype=np.float64)
            cands = [t] if t in pool and pool[t].size == a.size else by_size.get(a.size, [])
            if any(_matches(a, pool[c], scale_ok=False) for c in cands):
                continue
            if any(_matches(a, pool[c] * factor, scale_ok=False) for c in cands):
                return dict(base, node=node.name or f"<unnamed {node.op_type}>", op_type=node.op_type, tensor=t,
                            factor=factor, detail=f"output is {factor:g} x the matching tensor of {good.name}, "
                                                  "as are the logits: this node introduces the scale error")
    return dict(base, factor=factor, detail=f"the logits are {factor:g} x those of {good.name}: a scale factor "
                                            "was lost or doubled in the float nodes")


def _fit(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """c with a == c * b (to tolerance), or None."""
    den = float(np.sum(b * b))
    if a.shape != b.shape or den == 0.0:
        return None
    c = float(np.sum(a * b)) / den
    return c if np.max(np.abs(a - c * b)) <= MATCH_REL * max(1.0, float(np.max(np.abs(a)))) else None


def _views(b: np.ndarray, shape) -> list[np.ndarray]:
    views = [b]
    if b.ndim == 4:
        views += [b.transpose(0, 2, 3, 1), b.transpose(0, 3, 1, 2)]
    return [v.reshape(shape) for v in views if v.size == int(np.prod(shape))]


def _matches(a: np.ndarray, b: np.ndarray, scale_ok: bool) -> bool:
    tol = MATCH_REL * max(1.0, float(np.max(np.abs(a))))
    for v in _views(b, a.shape):
        if scale_ok:
            den = float(np.sum(v * v))
            if den == 0.0:
                if not np.any(a):
                    return True
                continue
            v = v * (float(np.sum(a * v)) / den)
        if np.max(np.abs(a - v)) <= tol:
            return True
    return False


def _as_dtype_of(a: np.ndarray, dtype, good_dtype) -> np.ndarray:
    """`a` in the encoding of the good stage's tensor: FINN streamlines bipolar {-1, +1}
    activations into binary {0, 1} bits (XNOR-popcount), x = (b + 1) / 2."""
    if dtype is not None and good_dtype is not None and dtype.name == "BINARY" and good_dtype.name == "BIPOLAR":
        return 2 * a - 1
    return a


def _is_int(dtype) -> bool:
    return dtype is not None and dtype.is_integer()


def check_executor(stage: Stage, sample: np.ndarray, work_dir: Optional[Path] = None) -> float:
    """max |batched executor - FINN execute_onnx| on `sample` [k, ...]; 0.0 means identical.

    The batched executor runs the k samples as one batch; FINN runs them one by one.
    """
    from compilers.finn.execute import run_finn_reference

    model = _load(stage.model_path)
    parent = _load(stage.parent_path) if stage.parent_path else None
    ours = run_outputs(stage, sample, batch=len(sample))
    outer = parent if parent is not None else model
    names = [o.name for o in outer.graph.output]
    theirs = [[] for _ in names]
    for i in range(len(sample)):
        ctx = run_finn_reference(outer, sample[i : i + 1], partition=model if parent is not None else None,
                                 work_dir=work_dir)
        for k, name in enumerate(names):
            theirs[k].append(np.asarray(ctx[name]).reshape(1, -1))
    worst = 0.0
    for o, t in zip(ours, theirs):
        t = np.concatenate(t, axis=0)
        worst = max(worst, float(np.max(np.abs(o - t))) / max(1.0, float(np.max(np.abs(t)))))
    return worst
