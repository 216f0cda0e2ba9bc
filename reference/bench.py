"""`qdeploy bench`: throughput of every runtime present, measured with pytest-benchmark,
interleaved (round-major: every runtime once per round, then the next round), written in
one schema (docs/CONTRACTS.md, "bench") to build/<recipe>/bench/bench.json.

Runtimes: PyTorch FP32 eager, onnxruntime FP32, onnxruntime INT8 QDQ (GPU artifact),
OpenVINO FP32 and INT8 IR (sync, and async with the throughput hint), TensorRT where it
exists; FINN's fps estimate is listed beside them, labelled an estimate.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core import layout
from core.atomic import write_json
from core.console import console
from core.errors import UserError
from reference.inputs import Inputs

BATCHES = (1, 16)
ROUNDS = 3  # interleaved rounds; each is one pytest-benchmark test per runtime and batch
BENCH_SCHEMA = "qdeploy.bench/1"


@dataclass
class Runtime:
    name: str  # unique, e.g. "openvino-int8-async"
    target: str | None
    precision: str
    device: str
    mode: str  # sync | async
    make_fn: Callable[[np.ndarray], Callable]  # pixels -> no-arg callable with .images
    threads: Callable[[], int | None] = lambda: None  # intra-op threads the runtime uses
    settings: Callable[[], dict] = dict  # what else decides its speed (streams, requests, hints)


def _openvino_settings(runner) -> dict:
    """What benchmark_app prints: streams, threads, infer requests, hint (after compilation)."""
    out = {}
    for key in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS", "PERFORMANCE_HINT",
                "INFERENCE_PRECISION_HINT"):
        try:
            out[key.lower()] = str(runner.compiled.get_property(key))
        except Exception:  # a device without the property
            continue
    return out


class _OpenVINOMaker:
    """Compiles the IR for each batch size; remembers the last runner for its settings."""

    def __init__(self, xml, choice, precision, mode):
        self.xml, self.choice, self.precision, self.mode, self.last = xml, choice, precision, mode, None

    def __call__(self, px):
        from targets.runners import OpenVINORunner

        self.last = OpenVINORunner(self.xml, self.choice, self.precision, batch=len(px), mode=self.mode)
        return self.last.infer_fn(px)

    def settings(self) -> dict:
        s = _openvino_settings(self.last) if self.last is not None else {}
        if self.mode == "async" and self.last is not None:
            s["requests_in_flight"] = len(self.last._queue)
        return s

    def threads(self) -> int | None:
        v = self.settings().get("inference_num_threads")
        return int(v) if v and v.isdigit() else None


def _float_runtimes(ctx: Inputs, work: Path) -> list[Runtime]:
    import torch

    from compilers.openvino_ir import to_openvino_ir
    from quant.checkpoint import load_checkpoint
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner, OrtRunner, TorchRunner

    model, _ = load_checkpoint(ctx.layout.float_checkpoint)
    h, w = ctx.recipe.dataset.size
    onnx_path = work / "float.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, h, w), str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    xml = to_openvino_ir(model, (1, 1, h, w), work / "float.xml")
    threads = _cores()
    torch_runner = TorchRunner(model, name="pytorch-fp32")
    ort_runner = OrtRunner(onnx_path, name="onnxruntime-fp32", threads=threads)
    cpu = select_device("cpu")
    ov = _OpenVINOMaker(xml, cpu, "default", "sync")
    return [
        Runtime("pytorch-fp32", None, "fp32", "cpu", "sync", torch_runner.infer_fn, torch.get_num_threads,
                lambda: {"eager": True, "inference_mode": True}),
        Runtime("onnxruntime-fp32", None, "fp32", "cpu", "sync", ort_runner.infer_fn, lambda: threads,
                lambda: {"execution_provider": "CPUExecutionProvider", "graph_optimization": "all"}),
        Runtime("openvino-fp32", None, "fp32 (device default)", "CPU", "sync", ov, ov.threads, ov.settings),
    ]


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _target_runtimes(ctx: Inputs) -> list[Runtime]:
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner, OrtRunner

    out = []
    qdq = ctx.layout.qdq_onnx
    if qdq.is_file():
        threads = _cores()
        ort_q = OrtRunner(qdq, name="onnxruntime-int8-qdq", threads=threads)
        out.append(Runtime("onnxruntime-int8-qdq", "gpu", "int8 QDQ", "cpu", "sync", ort_q.infer_fn, lambda: threads,
                           lambda: {"execution_provider": "CPUExecutionProvider", "graph_optimization": "all"}))
    xml = ctx.layout.openvino_ir
    if xml.is_file():
        choice = select_device(ctx.recipe.npu.device)
        dev = choice.device
        for mode in ("sync", "async"):
            ov = _OpenVINOMaker(xml, choice, "default", mode)
            out.append(Runtime(f"openvino-int8-{mode}", "npu", "int8", dev, mode, ov, ov.threads, ov.settings))
    engine = ctx.layout.trt_engine
    if engine.is_file():
        from compilers.tensorrt.engine import tensorrt_available
        from targets.tensorrt_runner import TensorRTRunner

        if tensorrt_available()[0]:
            trt = TensorRTRunner(engine)
            out.append(Runtime("tensorrt-int8", "gpu", "int8", trt.device, "sync", trt.infer_fn, lambda: None,
                               lambda: {"engine": str(engine)}))
    return out


def _estimates(ctx: Inputs) -> list[dict]:
    path = ctx.layout.fpga_summary
    if not path.is_file():
        return []
    s = json.loads(path.read_text())
    # FINN's cycle model: a new image every 1/fps in the stream; one image's latency through the pipeline
    latency = (s.get("finn_estimate") or {}).get("est_latency_ms")
    lat = {q: float(latency) for q in ("p50", "p90", "p99")} if latency else None
    precision = f"w{ctx.recipe.model.weight_bits}a{ctx.recipe.model.act_bits}"
    reps = int(s.get("replicas") or 1)
    rows = [{"runtime": f"finn-dataflow ({s['part']} @ {s['clock_mhz']:g} MHz"
                        + (f", {reps} data-parallel instances)" if reps > 1 else ")"),
             "target": "fpga", "precision": precision, "device": s["part"], "batch": 1,
             "mode": "stream", "threads": None, "images_per_s": float(s["est_fps"]),
             "median_ms_per_batch": 1000.0 / float(s["est_fps"]), "latency_ms": lat,
             "settings": {"clock_mhz": s["clock_mhz"], "source": "FINN estimate (cycle model), not measured",
                          "folding": "qdeploy", "replicas": reps, "resources": s.get("resources"),
                          "binding": s.get("binding"), "pareto": s.get("pareto")},
             "kind": "estimate", "ratio_vs": {}}]
    sf = s.get("setfolding") or {}
    if sf.get("est_fps"):  # FINN's own folding of the same model at the same target, beside ours
        rows.append({**rows[0], "runtime": f"finn-dataflow, FINN SetFolding ({s['part']} @ {s['clock_mhz']:g} MHz)",
                     "images_per_s": float(sf["est_fps"]), "median_ms_per_batch": 1000.0 / float(sf["est_fps"]),
                     "latency_ms": None,
                     "settings": {"clock_mhz": s["clock_mhz"], "source": "FINN estimate (cycle model), not measured",
                                  "folding": "finn.SetFolding (fresh, same target)",
                                  "resources": {r: sf.get(r) for r in ("LUT", "BRAM_18K", "URAM", "DSP")},
                                  "binding": {"resource": sf.get("binding"), "share": sf.get("binding_share")}}})
    return rows


class _Plugin:
    """Hands the prepared callables to pytest-benchmark, in interleaved order."""

    def __init__(self, cases: list[tuple[int, str, int]], fns: dict):
        self.cases, self.fns = cases, fns

    def pytest_generate_tests(self, metafunc):
        if "bench_case" in metafunc.fixturenames:
            metafunc.parametrize("bench_case", self.cases, ids=[f"r{r}-{n}-b{b}" for r, n, b in self.cases])

    def pytest_configure(self, config):
        config._bench_fns = self.fns


def run_bench(ctx: Inputs, rounds: int = ROUNDS, batches=BATCHES) -> dict:
    import pytest

    if not (ctx.stage_dir("train") / "float.json").is_file():
        raise UserError(f"no trained model in {ctx.stage_dir('train')}: run 'make train' (or a build) first")
    out_dir = ctx.layout.bench_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ctx.recipe.seed)
    h, w = ctx.recipe.dataset.size
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        runtimes = _float_runtimes(ctx, Path(tmp)) + _target_runtimes(ctx)
        fns = {}
        for rt in runtimes:
            for b in batches:
                fns[(rt.name, b)] = rt.make_fn(rng.integers(0, 256, size=(b, 1, h, w), dtype=np.uint8))
        cases = [(r, rt.name, b) for r in range(rounds) for rt in runtimes for b in batches]
        raw = out_dir / "pytest-benchmark.json"
        suite = Path(__file__).with_name("bench_suite.py")
        code = pytest.main([str(suite), "-q", "-p", "no:cacheprovider", "--benchmark-json", str(raw),
                            "--benchmark-disable-gc", "--benchmark-warmup=on", "-o", "python_files=bench_suite.py"],
                           plugins=[_Plugin(cases, fns)])
        if code != 0:
            raise RuntimeError(f"benchmark run failed (pytest exit {code})")
    result = summarize(json.loads(raw.read_text()), runtimes, fns)
    result["results"] += _estimates(ctx)
    write_json(out_dir / layout.BENCH, result)
    print_bench(result)
    return result


def summarize(raw: dict, runtimes: list[Runtime], fns: dict) -> dict:
    """pytest-benchmark JSON -> our schema: per runtime and batch, median over every
    timed call of every interleaved round; images/s and ratios against the FP32 baselines."""
    times: dict[tuple[str, int], list[float]] = {}
    for b in raw["benchmarks"]:
        _, name, batch = b["params"]["bench_case"]
        times.setdefault((name, batch), []).extend(b["stats"]["data"])
    by_name = {rt.name: rt for rt in runtimes}
    results = []
    for (name, batch), data in times.items():
        rt = by_name[name]
        med = float(np.median(data))
        images = fns[(name, batch)].images
        p50, p90, p99 = (float(np.percentile(data, q)) * 1000.0 for q in (50, 90, 99))
        results.append({"runtime": name, "target": rt.target, "precision": rt.precision, "device": rt.device,
                        "batch": batch, "mode": rt.mode, "threads": rt.threads(), "settings": rt.settings(),
                        "images_per_s": images / med,
                        "median_ms_per_batch": med * 1000.0, "latency_ms": {"p50": p50, "p90": p90, "p99": p99},
                        "images_per_call": images, "kind": "measured", "calls_timed": len(data)})
    for r in results:
        for base in ("pytorch-fp32", "onnxruntime-fp32"):
            ref = next((x for x in results if x["runtime"] == base and x["batch"] == r["batch"]), None)
            r.setdefault("ratio_vs", {})[base] = r["images_per_s"] / ref["images_per_s"] if ref else None
    from core import machine

    return {"schema": BENCH_SCHEMA, "machine": machine.identity(), "rounds_interleaved": max(
                (b["params"]["bench_case"][0] for b in raw["benchmarks"]), default=0) + 1, "results": results}


def print_bench(result: dict) -> None:
    from rich.table import Table

    from core.machine import summary

    machine = result.get("machine")
    on = f" on {summary(machine)}" if isinstance(machine, dict) else ""
    table = Table(title=f"throughput (images/s; interleaved rounds, medians; latency per call){on}")
    for col in ("runtime", "target", "device", "mode", "batch", "threads", "images/s", "p50 ms", "p90 ms", "p99 ms",
                "x PyTorch FP32", "x ORT FP32", "kind"):
        table.add_column(col, justify="right" if col not in ("runtime", "target", "device", "mode", "kind") else "left")
    for r in sorted(result["results"], key=lambda r: (r["batch"], r["runtime"])):
        ratios = r.get("ratio_vs", {})
        fmt = lambda v: f"{v:.2f}" if v else "-"  # noqa: E731
        lat = r.get("latency_ms") or {}
        ms = lambda q: f"{lat[q]:.3f}" if q in lat else "-"  # noqa: E731
        table.add_row(r["runtime"], r["target"] or "-", str(r["device"]), str(r.get("mode", "-")), str(r["batch"]),
                      str(r.get("threads") or "-"), f"{r['images_per_s']:.0f}", ms("p50"), ms("p90"), ms("p99"),
                      fmt(ratios.get("pytorch-fp32")), fmt(ratios.get("onnxruntime-fp32")),
                      "ESTIMATE" if r["kind"] == "estimate" else r["kind"])
    console.print(table)
    pareto = next((r["settings"].get("pareto") for r in result["results"]
                   if r["target"] == "fpga" and r["settings"].get("folding") == "qdeploy"), None)
    if pareto:
        print_pareto(pareto)


def print_pareto(rows: list[dict]) -> None:
    """Our folding beside FINN's SetFolding at each target: fps and the binding resource (estimates)."""
    from rich.table import Table

    table = Table(title="FPGA folding: fps against the binding resource share of the part (FINN estimates)")
    for col in ("target fps", "folding", "fps", "binding resource", "share", "within budget"):
        table.add_column(col, justify="left" if col in ("folding", "binding resource") else "right")
    for row in rows:
        for name in ("qdeploy", "setfolding"):
            d = row.get(name) or {}
            fps = f"{d['est_fps']:,.0f}" if d.get("est_fps") else "does not fit"
            share = f"{d['binding_share']:.1%}" if d.get("binding_share") is not None else "-"
            table.add_row(f"{row['target_fps']:,}", name, fps, str(d.get("binding") or "-"), share,
                          "yes" if d.get("fits") else "no")
    console.print(table)
