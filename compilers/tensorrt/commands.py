"""The trtexec / polygraphy commands that build and check the engine on a GPU machine.

Written next to the ONNX as `trt_build.sh` (paths relative to the script, so the folder
can be copied to the GPU machine as is) and `TENSORRT.md` (the same commands, explained).

Precision: the QDQ ONNX is explicitly quantized, so by default the network is built
strongly typed (trtexec --stronglyTyped, polygraphy --strongly-typed): TensorRT runs
exactly the Q/DQ it is given in INT8 and every other layer in the ONNX's FP32. NVIDIA's
guidance for explicit quantization is strong typing without precision flags (they are
refused together). `strongly_typed=False` writes the TensorRT 10 weakly-typed form
instead (--int8 --fp16: layers outside Q/DQ may run in FP16: faster on SiLU/SE-heavy
models, less faithful; TensorRT 11 removed it: networks are always strongly typed).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compilers.tensorrt.qdq_export import input_spec
from compilers.tensorrt.qdq_layout import load_model
from core import atomic
from core.errors import UserError

SCRIPT_NAME = "trt_build.sh"
README_NAME = "TENSORRT.md"
ATOL_FRACTION = 0.03


@dataclass
class TrtCommands:
    script: Path
    readme: Path
    build: list[str]  # trtexec: build and save the engine
    bench: list[list[str]]  # trtexec: throughput of the saved engine, one per batch size
    compare: list[str]  # polygraphy: TensorRT vs onnxruntime on the same inputs


def write_trt_commands(
    onnx_path: str | Path,
    engine_name: str = "model.engine",
    timing_cache: str = "timing.cache",
    batches: tuple[int, int, int] = (1, 16, 16),
    strongly_typed: bool = True,
    atol: float | None = None,
) -> TrtCommands:
    """Write trt_build.sh and TENSORRT.md beside `onnx_path`; return the commands.

    batches: (min, opt, max) of the optimisation profile for a dynamic-batch ONNX; an
    ONNX with a fixed batch gets that batch only.
    atol: polygraphy fails if the largest |TensorRT - onnxruntime| logit difference exceeds
    it. Default: ATOL_FRACTION of the largest |logit| onnxruntime gives on 16 random
    inputs (two INT8 implementations round requantization differently; onnxruntime vs the
    NNCF torch model differed by 1.7% of the logit range on ResNet-8).
    """
    onnx_path = Path(onnx_path)
    model, _ = load_model(onnx_path)
    name, fixed, chw = input_spec(model)
    if not chw or any(d <= 0 for d in chw):
        raise UserError(f"{onnx_path}: input '{name}' has a non-static shape {chw} apart from the batch")
    lo, opt, hi = (fixed,) * 3 if fixed else batches
    if not 1 <= lo <= opt <= hi:
        raise UserError(f"batches must be 1 <= min <= opt <= max, got {batches}")
    if atol is None:
        atol = ATOL_FRACTION * _logit_scale(onnx_path, name, chw, fixed)
    dims = lambda n: "x".join(str(d) for d in (n, *chw))  # noqa: E731
    brackets = lambda n: f"{name}:[{','.join(str(d) for d in (n, *chw))}]"  # noqa: E731
    model_file = onnx_path.name

    build = ["trtexec", f"--onnx={model_file}"]
    build += ["--stronglyTyped"] if strongly_typed else ["--int8", "--fp16"]
    build += [f"--minShapes={name}:{dims(lo)}", f"--optShapes={name}:{dims(opt)}", f"--maxShapes={name}:{dims(hi)}"]
    build += [f"--saveEngine={engine_name}", f"--timingCacheFile={timing_cache}", "--skipInference"]
    bench = [["trtexec", f"--loadEngine={engine_name}", f"--shapes={name}:{dims(b)}"] for b in sorted({lo, hi})]
    compare = ["polygraphy", "run", model_file, "--trt", "--onnxrt"]
    compare += ["--strongly-typed"] if strongly_typed else ["--int8", "--fp16"]
    compare += ["--trt-min-shapes", brackets(lo), "--trt-opt-shapes", brackets(opt), "--trt-max-shapes", brackets(hi)]
    compare += ["--input-shapes", brackets(opt), "--val-range", f"{name}:[0,1]", "--data-loader-seed", "0"]
    compare += ["--atol", f"{atol:.3g}", "--rtol", "0", "--check-error-stat", "max"]

    script = onnx_path.parent / SCRIPT_NAME
    atomic.write_text(script, _script(build, bench, compare))
    os.chmod(script, 0o755)
    readme = onnx_path.parent / README_NAME
    atomic.write_text(readme, _readme(model_file, build, bench, compare, strongly_typed, (lo, opt, hi)))
    return TrtCommands(script=script, readme=readme, build=build, bench=bench, compare=compare)


def _logit_scale(onnx_path: Path, name: str, chw: tuple[int, ...], batch: int | None) -> float:
    """The largest |logit| onnxruntime gives on 16 seeded random inputs in [0, 1]."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch or 16, *chw), dtype=np.float32)
    return float(np.abs(session.run(None, {name: x})[0]).max()) or 1.0


def _sh(argv: list[str]) -> str:
    """Shell-quoted, one option (with its values) per continuation line."""
    lines: list[list[str]] = [[]]
    for arg in argv:
        if arg.startswith("--"):
            lines.append([])
        lines[-1].append(shlex.quote(arg))
    return " \\\n    ".join(" ".join(line) for line in lines if line)


def _script(build, bench, compare) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT INT8 engine from the QDQ ONNX beside this script, benchmark it,",
        "# and compare TensorRT with onnxruntime. Needs TensorRT 10+ (trtexec on PATH) and",
        "# polygraphy (pip install polygraphy) on a machine with an NVIDIA GPU.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'command -v trtexec >/dev/null || { echo "trtexec not found: add TensorRT\'s bin directory to PATH" >&2; exit 2; }',
        _sh(build),
        *(_sh(b) for b in bench),
        'if command -v polygraphy >/dev/null; then',
        "  " + _sh(compare),
        "else",
        '  echo "polygraphy not found (pip install polygraphy): skipped the TensorRT vs onnxruntime comparison" >&2',
        "fi",
    ]
    return "\n".join(lines) + "\n"


def _readme(model_file, build, bench, compare, strongly_typed, profile) -> str:
    mode = (
        "strongly typed: Q/DQ layers run in INT8, everything else in the ONNX's FP32"
        if strongly_typed
        else "weakly typed (TensorRT 10 only): INT8 where Q/DQ say so, other layers may run in FP16"
    )
    fence = lambda argv: "```sh\n" + _sh(argv) + "\n```"  # noqa: E731
    return "\n".join(
        [
            "# TensorRT INT8 engine",
            "",
            f"`{model_file}` is explicitly quantized (QDQ: INT8, symmetric, per-channel weights,",
            "per-tensor activations).",
            f"Built {mode}.",
            f"Optimisation profile: batch {profile[0]}..{profile[2]}, tuned for {profile[1]}.",
            f"`{SCRIPT_NAME}` runs all of the below from this folder; an engine only runs with the",
            "TensorRT version and GPU model that built it.",
            "",
            "Build (the timing cache makes rebuilds on the same GPU fast):",
            "",
            fence(build),
            "",
            "Throughput of the saved engine:",
            "",
            *(fence(b) + "\n" for b in bench),
            "TensorRT vs onnxruntime on the same random inputs in [0, 1] (the model's input range).",
            f"It fails if the largest logit difference exceeds --atol ({ATOL_FRACTION:.0%} of the largest |logit|):",
            "both run INT8 kernels that round requantization slightly differently, which moves a few",
            "logits by about one quantization step.",
            "",
            fence(compare),
            "",
        ]
    )
