"""Per-stage parity: every saved intermediate model against the reference logits.

Each stage model is executed in FINN's python mode (see execute.py: FINN's own node
implementations, batched) on the whole sample set of uint8 pixels [N, C, H, W]. A
post-partition stage runs inside the parent graph (host ops + that stage's partition).

Metrics per stage, on float logits:
- max_abs_diff:  max |stage - reference|;
- rel_diff:      max_abs_diff / logit scale, the scale being max |reference|;
- argmax_agreement: fraction of samples whose stage argmax is a reference argmax
                 (a reference tie within the tolerance counts as agreement);
- exact:         rel_diff <= EXACT_REL (float rounding only: the integer datapath
                 matches and only the final float scale may round differently).

When a stage is not exact, `first_divergence` names the first node (in graph order)
whose output differs from the previous good stage's tensor of the same name on the
worst sample, preferring integer-typed tensors (their values do not change when a
step moves float scales around).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

EXACT_REL = 1e-5


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
    rel_diff: float
    exact: bool
    seconds: float
    first_divergence: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


def stage_executor(stage: Stage):
    from compilers.finn.execute import Executor

    model = _load(stage.model_path)
    if stage.parent_path is None:
        return Executor(model)
    return Executor(_load(stage.parent_path), partition=model)


def run_stage(stage: Stage, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of one stage for uint8 pixels [N, C, H, W] (float32 [N, classes])."""
    ex = stage_executor(stage)
    (name,) = ex.input_names
    out = ex.output_names[0]
    x = pixels.astype(np.float32)
    chunks = [ex.run({name: x[i : i + batch]})[out] for i in range(0, len(x), batch)]
    return np.concatenate(chunks, axis=0).reshape(len(x), -1)


def compare(logits: np.ndarray, reference: np.ndarray) -> dict:
    logits = np.asarray(logits, dtype=np.float64).reshape(reference.shape)
    ref = np.asarray(reference, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) or 1.0
    d = np.abs(logits - ref)
    tol = EXACT_REL * scale
    picked = ref[np.arange(len(ref)), logits.argmax(axis=1)]
    agree = picked >= ref.max(axis=1) - tol
    return {
        "max_abs_diff": float(d.max()) if d.size else 0.0,
        "rel_diff": float(d.max() / scale) if d.size else 0.0,
        "argmax_agreement": float(agree.mean()) if len(agree) else 1.0,
        "exact": bool(d.size == 0 or d.max() <= tol),
        "worst_sample": int(d.max(axis=1).argmax()) if d.size else 0,
    }


def check_stages(stages: Sequence[Stage], pixels: np.ndarray, reference: np.ndarray, batch: int = 64,
                 localize: bool = True) -> list[StageParity]:
    """Parity of every stage; the first divergent node for stages that are not exact."""
    results: list[StageParity] = []
    last_good: Optional[Stage] = None
    for stage in stages:
        t0 = time.perf_counter()
        logits = run_stage(stage, pixels, batch=batch)
        m = compare(logits, reference)
        res = StageParity(stage.name, len(pixels), m["argmax_agreement"], m["max_abs_diff"], m["rel_diff"],
                          m["exact"], 0.0)
        if not m["exact"] and localize:
            res.first_divergence = first_divergence(stage, last_good, pixels[m["worst_sample"] : m["worst_sample"] + 1])
            res.first_divergence["sample"] = m["worst_sample"]
        res.seconds = round(time.perf_counter() - t0, 3)
        results.append(res)
        if m["exact"]:
            last_good = stage
    return results


def full_context(stage: Stage, sample: np.ndarray) -> tuple[dict, list, dict]:
    """All tensors of one stage on one sample, its nodes in execution order, tensor dtypes."""
    ex = stage_executor(stage)
    (name,) = ex.input_names
    ctx = ex.run({name: sample.astype(np.float32)}, full=True)
    nodes, dtypes = [], {}
    for e in [ex, *ex._children.values()]:
        for n in e.graph.node:
            if n.op_type != "StreamingDataflowPartition":
                nodes.append(n)
        dtypes.update(e._dtypes)
    return ctx, nodes, dtypes


def first_divergence(stage: Stage, good: Optional[Stage], sample: np.ndarray) -> dict:
    """The first node of `stage` whose output differs from `good`'s tensor of the same name."""
    if good is None:
        return {"node": None, "compared_with": None,
                "detail": "the first stage already differs from the reference logits: the QONNX export "
                          "does not compute the reference model (or the reference is not of this model)"}
    ctx, nodes, dtypes = full_context(stage, sample)
    ref_ctx, _, ref_dtypes = full_context(good, sample)
    float_hit = None
    for node in nodes:
        for t in node.output:
            if t not in ref_ctx or t not in ctx or ref_ctx[t] is None or ctx[t] is None:
                continue
            a, b = np.asarray(ctx[t]), np.asarray(ref_ctx[t])
            if a.shape != b.shape:
                continue
            d = float(np.max(np.abs(a - b))) if a.size else 0.0
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            if d <= EXACT_REL * max(1.0, scale):
                continue
            hit = {"node": node.name, "op_type": node.op_type, "tensor": t, "max_abs_diff": d,
                   "tensor_scale": scale, "compared_with": good.name}
            integer = _is_int(dtypes.get(t)) and _is_int(ref_dtypes.get(t))
            if integer:
                return hit
            if float_hit is None:
                float_hit = dict(hit, detail="float tensor: may differ only by a scale the step moved")
    if float_hit is not None:
        return float_hit
    return {"node": None, "compared_with": good.name,
            "detail": "no tensor shared by name with the previous good stage differs; only the output does"}


def _is_int(dtype) -> bool:
    return dtype is not None and dtype.is_integer()


def check_executor(stage: Stage, sample: np.ndarray, work_dir: Optional[Path] = None) -> float:
    """max |batched executor - FINN execute_onnx| on `sample` [k, ...]; 0.0 means identical.

    The batched executor runs the k samples as one batch; FINN runs them one by one.
    """
    from compilers.finn.execute import run_finn_reference

    model = _load(stage.model_path)
    parent = _load(stage.parent_path) if stage.parent_path else None
    ours = run_stage(stage, sample, batch=len(sample))
    outer = parent if parent is not None else model
    out_name = outer.graph.output[0].name
    theirs = []
    for i in range(len(sample)):
        ctx = run_finn_reference(outer, sample[i : i + 1], partition=model if parent is not None else None,
                                 work_dir=work_dir)
        theirs.append(np.asarray(ctx[out_name]).reshape(1, -1))
    theirs = np.concatenate(theirs, axis=0)
    scale = max(1.0, float(np.max(np.abs(theirs))))
    return float(np.max(np.abs(ours - theirs))) / scale
