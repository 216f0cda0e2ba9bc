"""QONNX -> FINN dataflow design, as an explicit ordered list of named steps.

    lower(qonnx_path, out_dir, part, clock_mhz, target_fps, budget,
          samples_uint8, reference_logits, folding=None) -> FinnResult

Every step is `step(model, cfg) -> model` (compilers/finn/steps.py). After each step
the runner saves `intermediate_models/<step>.onnx` and `time_per_step.json` under
`out_dir`; FINN's own scratch directory (generated code, partitions) is
`out_dir/finn_tmp`. After the steps, every saved stage is checked against the
reference logits (parity.py), and the remaining Vivado steps are either run (with
XILINX_VIVADO set) or written down with the command that runs them (continuation.py).

Output directory:
    intermediate_models/<step>.onnx, dataflow_parent.onnx, supported_op_partitions/
    report/estimate_layer_resources.json, estimate_layer_cycles.json,
           estimate_network_performance.json, op_and_param_counts.json, folding_config.json
    time_per_step.json, parity.json, finn_result.json, flow_state.json (resume after a stop)
    finn_build_config.json, NEXT_STEPS.txt      (the Vivado continuation)
    finn_tmp/                                   (FINN's build dir: HLS/RTL sources)
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from compilers.finn import steps as S
from compilers.finn.env import ensure_finn, finn_build_dir, tool_environment, vivado_available
from compilers.finn.part import require_part
from core.atomic import write_json, write_text
from core.errors import UserError
from quant import float64_values

Step = Callable[[Any, S.FlowConfig], Any]

STEPS: tuple[Step, ...] = (
    S.preprocess,
    S.fix_avgpool_trunc,
    S.qonnx_to_finn,
    S.tidy_up,
    S.streamline,
    S.convert_to_hw,
    S.minimize_bit_width_initial,
    S.create_dataflow_partition,
    S.specialize_layers,
    S.folding,
    S.transpose_decomposition,
    S.minimize_bit_width,
    S.estimate_reports,
    S.hw_codegen,
)
PARTITION_STEP = "create_dataflow_partition"
EXACT_UNTIL = "convert_to_hw"  # its RoundAndClipThresholds makes every threshold an integer
# a flow still running after this many seconds checks its stages in a worker process beside it
# (parity.StageChecker); a shorter one (a small model) checks them afterwards, in this process
PARITY_WORKER_AFTER_S = 30.0


@dataclass
class FinnResult:
    out_dir: Path
    final_model: Path  # the hw_codegen stage (the dataflow partition)
    parent_model: Path  # host ops around the partition
    stages: list[str]
    time_per_step: dict[str, float]
    est_fps: float
    est_latency_ms: float
    resources: dict[str, float]  # FINN estimate totals: LUT, BRAM_18K, URAM, DSP
    budget_use: dict[str, float]  # resource / (part capacity * budget); > 1 is over budget
    parity: list  # [StageParity]
    host_ops: list[str]
    generated_sources: dict[str, list[str]]
    continuation: Optional[str]  # the command that runs the Vivado steps; None when they ran
    notes: dict = field(default_factory=dict)

    @property
    def bit_exact(self) -> bool:
        return bool(self.parity) and all(p.exact for p in self.parity)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = [p.to_dict() for p in self.parity]
        d["bit_exact"] = self.bit_exact
        return d


def run_steps(model, cfg: S.FlowConfig, steps: Sequence[Step] = STEPS, log: Callable[[str], None] = print,
              key: str = "", state: dict | None = None, on_saved: Callable[[str], None] | None = None):
    """Run `steps` in order; save each stage's model, the step times and the flow state. Returns
    the last model and the step times.

    Up to and including `EXACT_UNTIL` (where thresholds become integers) the transformations
    compute on float64 initializer values (quant/float64_values.py); then those are dropped.
    state: what an earlier run with the same `key` finished (finished_state): start after its
    last step (FINN's start_step idiom: that step's saved model and notes are loaded).
    on_saved(step name): called after each step's model is saved, for the finished ones too
    (a resumed run calls it first for those, in order).
    """
    names = [s.__name__ for s in steps]
    exact_until = names.index(EXACT_UNTIL) if EXACT_UNTIL in names else -1
    if state is None:
        times, start = {}, 0
    else:
        times, start = {n: state["times"][n] for n in state["done"]}, len(state["done"])
        cfg.notes.update(state["notes"])
        model = load_qonnx(cfg.intermediate_dir / f"{names[start - 1]}.onnx")
        log(f"finn: resuming after {names[start - 1]} ({start}/{len(steps)} steps done by an earlier run)")
    for name in names[:start] if on_saved else ():
        on_saved(name)
    for i, step in enumerate(steps[start:], start):
        name = step.__name__
        log(f"finn [{i + 1}/{len(steps)}] {name}")
        t0 = time.perf_counter()
        if i <= exact_until:
            model = step(float64_values.exact(model), cfg)
            if i == exact_until:
                model = float64_values.plain(model, values=False)
        else:
            model = step(model, cfg)
        times[name] = round(time.perf_counter() - t0, 3)
        S.save_model(model, cfg.intermediate_dir / f"{name}.onnx")
        write_text(cfg.out_dir / "time_per_step.json", json.dumps(times, indent=2) + "\n")  # in step order
        write_json(cfg.out_dir / FLOW_STATE, {"key": key, "done": names[:i + 1], "times": times, "notes": cfg.notes})
        if on_saved:
            on_saved(name)
    return model, times


def finished_state(cfg: S.FlowConfig, key: str, names: Sequence[str]) -> dict | None:
    """What an earlier, interrupted run with the same key finished, when each of its step
    models is on disk (a run that finished every step is not resumed: running again is asked for)."""
    try:
        state = json.loads((cfg.out_dir / FLOW_STATE).read_text())
    except (OSError, ValueError):
        return None
    done = state.get("done") if isinstance(state, dict) else None
    if (not key or state.get("key") != key or not isinstance(done, list) or not done or len(done) >= len(names)
            or done != list(names[:len(done)]) or not isinstance(state.get("notes"), dict)
            or not isinstance(state.get("times"), dict) or not set(done) <= set(state["times"])
            or not all((cfg.intermediate_dir / f"{n}.onnx").is_file() for n in done)):
        return None
    return state


def flow_key(qonnx_path: Path, cfg: S.FlowConfig) -> str:
    """What the steps' results depend on: the input graph, the settings and the flow's own code."""
    import hashlib

    h = hashlib.sha256(Path(qonnx_path).read_bytes())
    folding = getattr(cfg.folding, "__qualname__", repr(cfg.folding)) if cfg.folding else "SetFolding"
    h.update(repr((cfg.part.name, cfg.clock_mhz, cfg.target_fps, cfg.budget, cfg.streamline, cfg.thresholds,
                   cfg.replicas, folding)).encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()


def stage_list(cfg: S.FlowConfig, steps: Sequence[Step] = STEPS):
    from compilers.finn.parity import Stage

    names = [s.__name__ for s in steps]
    out, parent = [], None
    for name in names:
        if name == PARTITION_STEP:
            parent = cfg.parent_model_path
        out.append(Stage(name, cfg.intermediate_dir / f"{name}.onnx", parent))
    return out


def lower(
    qonnx_path: str | Path,
    out_dir: str | Path,
    part: Any,
    clock_mhz: Optional[float] = None,
    target_fps: float = 1000.0,
    budget: float = 0.7,
    samples_uint8: Optional[np.ndarray] = None,
    reference_logits: Optional[np.ndarray] = None,
    folding: Optional[S.FoldingFn] = None,
    streamline: str = "auto",
    thresholds: str = "auto",
    replicas: int | str = 1,
    parity_batch: int = 64,
    log: Callable[[str], None] = print,
    resume: bool = True,
) -> FinnResult:
    """Lower a QONNX model to a FINN dataflow design with HLS/RTL sources, checking every stage.

    part: a compilers.finn.part.Part (targets.fpga_parts.get_part). clock_mhz: None -> the part's default.
    samples_uint8: uint8 pixels [N, C, H, W] for parity (None: no parity check).
    reference_logits: [N, classes] float logits of the trained model on those samples (a
    multi-output model: a list with one [N, ...] array per graph output, in graph order);
    None -> the QONNX graph itself, executed by qonnx, is the reference.
    folding: fold(model, part, clock_mhz, target_fps, budget) -> plan with .config/.est_fps;
    None -> FINN's SetFolding for target_fps.
    thresholds: "auto" | "standalone" | "embedded" activations (steps.standalone_thresholds).
    replicas: data-parallel instances of the design, or "auto" (compilers.finn.folding.fold).
    resume: a run stopped part-way (killed, interrupted) with the same input, settings and flow
    code continues after its last finished step; anything else starts afresh.
    """
    from compilers.finn.checks import check_lowerable
    from compilers.finn.continuation import run_continuation, write_continuation
    from compilers.finn.parity import StageChecker

    ensure_finn()
    part = require_part(part)
    clock_mhz = float(clock_mhz or getattr(part, "default_clock_mhz", 0) or 0)
    if clock_mhz <= 0:
        raise UserError(f"no clock given and part '{getattr(part, 'name', part)}' has no default clock: pass clock_mhz")
    if target_fps <= 0 or not 0 < budget <= 1:
        raise UserError(f"target_fps must be > 0 and budget in (0, 1], got {target_fps} and {budget}")
    qonnx_path = Path(qonnx_path)
    model = tidy_input(load_qonnx(qonnx_path))
    check_lowerable(model, source=qonnx_path.name)
    if samples_uint8 is not None:
        samples_uint8, reference_logits = parity_inputs(model, samples_uint8, reference_logits, parity_batch)

    cfg = S.FlowConfig(Path(out_dir).resolve(), part, clock_mhz, float(target_fps), float(budget), folding, streamline,
                       thresholds, replicas)
    S.standalone_thresholds(cfg)  # a bad mode fails here, before any step
    key = flow_key(qonnx_path, cfg)
    state = finished_state(cfg, key, [s.__name__ for s in STEPS]) if resume else None
    if state is None:
        clear_outputs(cfg)
    with finn_build_dir(cfg.finn_tmp), contextlib.ExitStack() as stack:
        checker, on_saved = None, None
        if samples_uint8 is not None:  # each stage's parity runs beside the next step (parity.StageChecker)
            checker = stack.enter_context(StageChecker(samples_uint8, reference_logits, batch=parity_batch,
                                                       background_after_s=PARITY_WORKER_AFTER_S))
            stages = {s.name: s for s in stage_list(cfg)}
            on_saved = lambda name: checker.add(stages[name])  # noqa: E731
        _, times = run_steps(model, cfg, log=log, key=key, state=state, on_saved=on_saved)
        parity = []
        if checker is not None:
            log(f"finn parity: {len(samples_uint8)} samples x {len(STEPS)} stages")
            parity = checker.results()
            write_json(cfg.out_dir / "parity.json", [p.to_dict() for p in parity])
        final_path = cfg.intermediate_dir / f"{STEPS[-1].__name__}.onnx"
        cont = write_continuation(cfg, final_path)
        command = cont.command_line()
        if vivado_available():
            log(f"finn: XILINX_VIVADO is set, running the Vivado steps: {command}")
            run_continuation(cont, tool_environment(cfg.finn_tmp))
            command = None
        else:
            log(cont.message())
    result = collect_result(cfg, times, parity, final_path, command)
    write_json(cfg.out_dir / "finn_result.json", result.to_dict())
    return result


def parity_inputs(model, samples_uint8, reference_logits, batch: int):
    """Validated samples and reference outputs (the QONNX graph's own when none are given).

    One graph output: reference_logits is [N, classes]. Several (e.g. logits and a
    segmentation map): a list with one [N, ...] array per graph output, in graph order.
    """
    in_shape = tuple(model.get_tensor_shape(model.graph.input[0].name))
    samples_uint8 = check_samples(samples_uint8, in_shape)
    if reference_logits is None:
        reference_logits = qonnx_reference(model, samples_uint8, batch=batch)
    n_out = len(model.graph.output)
    refs = list(reference_logits) if isinstance(reference_logits, (list, tuple)) else [reference_logits]
    if len(refs) != n_out:
        raise UserError(f"the model has {n_out} outputs but {len(refs)} reference arrays were given "
                        "(pass a list with one [N, ...] array per output, in graph order)")
    refs = [np.asarray(r, dtype=np.float32) for r in refs]
    if refs[0].ndim != 2 or any(len(r) != len(samples_uint8) for r in refs):
        raise UserError(
            f"reference_logits has shape {[r.shape for r in refs]}; expected [{len(samples_uint8)}, classes] "
            "(one row per sample) for the first output"
        )
    return samples_uint8, (refs[0] if n_out == 1 else [r.reshape(len(r), -1) for r in refs])


FLOW_STATE = "flow_state.json"  # the steps an interrupted run finished (run_steps resume)
_OUTPUTS = ("intermediate_models", "report", "finn_tmp", "time_per_step.json", "parity.json", "finn_result.json",
            "finn_build_config.json", "NEXT_STEPS.txt", FLOW_STATE)


def clear_outputs(cfg: S.FlowConfig) -> None:
    """Remove what a previous lower() left in out_dir (never the Vivado results in vivado/)."""
    import shutil

    for name in _OUTPUTS:
        path = cfg.out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    cfg.intermediate_dir.mkdir(parents=True, exist_ok=True)


def collect_result(cfg: S.FlowConfig, times, parity, final_path: Path, command: Optional[str]) -> FinnResult:
    perf = json.loads((cfg.report_dir / "estimate_network_performance.json").read_text())
    totals = json.loads((cfg.report_dir / "estimate_layer_resources.json").read_text())["total"]
    notes = {k: v for k, v in cfg.notes.items() if k not in ("host_ops", "generated_sources")}
    return FinnResult(
        out_dir=cfg.out_dir,
        final_model=final_path,
        parent_model=cfg.parent_model_path,
        stages=[s.__name__ for s in STEPS],
        time_per_step=times,
        est_fps=float(perf["estimated_throughput_fps"]),
        est_latency_ms=float(perf["estimated_latency_ns"]) / 1e6,
        resources={k: float(v) for k, v in totals.items()},
        budget_use=budget_use(totals, cfg.part, cfg.budget),
        parity=parity,
        host_ops=cfg.notes.get("host_ops", []),
        generated_sources=cfg.notes.get("generated_sources", {}),
        continuation=command,
        notes={"config": S.config_summary(cfg), **notes},
    )


# ---------------------------------------------------------------------------------------


def load_qonnx(path: Path):
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    if not path.is_file():
        raise UserError(f"QONNX model {path} not found")
    try:
        return ModelWrapper(str(path))
    except (onnx.onnx_cpp2py_export.checker.ValidationError, onnx.onnx_cpp2py_export.shape_inference.InferenceError,
            ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0]})") from None
    except Exception as e:  # protobuf DecodeError and friends
        if type(e).__name__ == "DecodeError":
            raise UserError(f"{path} is not an ONNX model (protobuf decode failed)") from None
        raise


def tidy_input(model):
    """A QONNX graph as any exporter wrote it, ready for the flow: qonnx's cleanup (constant
    folding, unique names, no static inputs), then shapes and datatypes inferred everywhere.

    Brevitas's dynamo exporter (external data, Reshape heads) and its TorchScript one leave
    intermediate shapes unspecified, which FINN's execution and several steps need. Runs on
    the float64 values (quant/float64_values.py; a graph from elsewhere: its float32 values).
    """
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    from compilers.finn.checks import keep_exported_names

    float64_values.widen(model.model)
    keep_exported_names(model)
    model = cleanup_model(float64_values.exact(model))
    return float64_values.plain(model.transform(InferShapes()).transform(InferDataTypes()))


def check_samples(samples: np.ndarray, in_shape: tuple) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype != np.uint8:
        raise UserError(f"parity samples must be uint8 pixels [N, C, H, W], got dtype {samples.dtype}")
    if samples.ndim != 4 or tuple(samples.shape[1:]) != tuple(in_shape[1:]) or len(samples) == 0:
        raise UserError(
            f"parity samples have shape {samples.shape}; the model takes [N, {', '.join(map(str, in_shape[1:]))}]"
        )
    return samples


def qonnx_reference(model, samples_uint8: np.ndarray, batch: int = 64):
    """Logits of the QONNX graph (qonnx's node implementations) on pixels * (1/255):
    [N, classes], or a list of [N, -1] arrays (one per output) for a multi-output graph."""
    from compilers.finn.execute import Executor
    from quant.preprocess import to_input_np

    ex = Executor(model)
    (name,) = ex.input_names
    x = to_input_np(samples_uint8)
    runs = [ex.run({name: x[i : i + batch]}) for i in range(0, len(x), batch)]
    outs = [np.concatenate([r[o] for r in runs]).reshape(len(x), -1) for o in ex.output_names]
    return outs[0] if len(outs) == 1 else outs


_CAPACITY = {"LUT": "luts", "BRAM_18K": "bram18", "URAM": "uram", "DSP": "dsp"}


def budget_use(totals: dict, part, budget: float) -> dict[str, float]:
    out = {}
    for key, attr in _CAPACITY.items():
        cap = getattr(part, attr, None)
        if cap:
            out[key] = float(totals.get(key, 0.0)) / (cap * budget)
    return out
