"""Build a TensorRT INT8 engine from a finalized QDQ ONNX (NVIDIA GPU machines).

    tensorrt_available() -> (bool, reason)
    build_engine(onnx_path, engine_path, timing_cache=None, batches=(1, 16, 16)) -> EngineBuild

Running an engine is targets/tensorrt_runner.py. `tensorrt` is imported inside the
functions, so this module imports anywhere. TensorRT 10 API: networks are always
explicit-batch; a QDQ network is built STRONGLY_TYPED with no precision flags (NVIDIA's
guidance for explicit quantization; TensorRT 11 dropped the flag: always strongly typed).
strongly_typed=False is the TensorRT 10 weakly-typed build (INT8 + FP16 flags: layers outside
Q/DQ may run in FP16). An engine is tied to the TensorRT version and GPU that built it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import UserError

INSTALL_HINT = "tensorrt is not installed (pip install tensorrt from NVIDIA's index on a machine with a CUDA GPU)"
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False: no NVIDIA GPU or driver, or a CPU-only torch build)"


def _import_tensorrt() -> tuple[Any, str]:
    """(module, "") or (None, why not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, INSTALL_HINT
    except Exception as e:  # a wheel whose libnvinfer does not load, a half-installed stub
        return None, f"tensorrt does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not hasattr(trt, "Builder"):
        return None, "the installed tensorrt package is a stub without the library: " + INSTALL_HINT
    return trt, ""


def _cuda_device() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, NO_CUDA
    return True, torch.cuda.get_device_name(0)


def tensorrt_available() -> tuple[bool, str]:
    """Whether an engine can be built and run here, and why not (or what will run it)."""
    trt, reason = _import_tensorrt()
    if trt is None:
        return False, reason
    ok, device = _cuda_device()
    if not ok:
        return False, device
    return True, f"TensorRT {trt.__version__} on {device}"


def require_tensorrt():
    """The tensorrt module, or UserError saying why it cannot be used."""
    trt, reason = _import_tensorrt()
    if trt is None:
        raise UserError(f"cannot build a TensorRT engine: {reason}")
    return trt


# --- build ------------------------------------------------------------------------------


@dataclass
class EngineBuild:
    engine: str
    tensorrt_version: str
    strongly_typed: bool
    input_name: str
    input_shape: list[int]  # as the network declares it (-1: dynamic)
    profile: list[list[int]] | None  # [min, opt, max] shapes; None for a static input
    timing_cache: str | None
    timing_cache_loaded: bool  # a previous cache was read and accepted
    build_s: float
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    timing_cache: str | Path | None = None,
    batches: tuple[int, int, int] = (1, 16, 16),
    strongly_typed: bool = True,
    workspace_mib: int = 1024,
) -> EngineBuild:
    """Parse the QDQ ONNX, build an INT8 engine and write it (and the timing cache) atomically."""
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX model not found: run the GPU compile step first")
    if not 1 <= batches[0] <= batches[1] <= batches[2]:
        raise UserError(f"batches must be 1 <= min <= opt <= max, got {batches}")
    t0 = time.perf_counter()
    notes: list[str] = []
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # pybind11: "factory function returned nullptr" without a usable GPU
        raise UserError(f"TensorRT cannot create a builder: {NO_CUDA}") from None

    flags = 0
    strong_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed and strong_flag is not None:
        flags |= 1 << int(strong_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        first = errors[0].splitlines()[0] if errors else "no error recorded"
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser rejected the model: {first}{more}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if not strongly_typed:
        if not hasattr(trt.BuilderFlag, "INT8"):
            raise UserError(f"TensorRT {trt.__version__} has no weakly-typed INT8 build: use strongly_typed=True")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)

    inp = network.get_input(0)
    shape = [int(d) for d in inp.shape]
    profile = None
    if shape[0] == -1:
        if any(d < 0 for d in shape[1:]):
            raise UserError(f"{onnx_path}: input '{inp.name}' {shape} is dynamic beyond the batch; export a fixed image size")
        profile = [[b, *shape[1:]] for b in batches]
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(inp.name, *(tuple(p) for p in profile))
        config.add_optimization_profile(opt_profile)
    else:
        notes.append(f"static input {shape}: the engine runs batch {shape[0]} only")

    loaded = _load_timing_cache(config, timing_cache, notes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; its log above says why")
    atomic.write_bytes(engine_path, _bytes(serialized))
    if timing_cache is not None:
        atomic.write_bytes(timing_cache, _bytes(config.get_timing_cache().serialize()))
    return EngineBuild(
        engine=str(engine_path),
        tensorrt_version=str(trt.__version__),
        strongly_typed=strongly_typed,
        input_name=inp.name,
        input_shape=shape,
        profile=profile,
        timing_cache=None if timing_cache is None else str(timing_cache),
        timing_cache_loaded=loaded,
        build_s=round(time.perf_counter() - t0, 3),
        notes=notes,
    )


def _load_timing_cache(config, path: str | Path | None, notes: list[str]) -> bool:
    """Start from the saved timing cache when there is one this GPU/TensorRT accepts."""
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return bool(data)
    notes.append(f"timing cache {path} is from another GPU or TensorRT version: started a new one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def _bytes(host_memory) -> bytes:
    """IHostMemory (buffer protocol) -> bytes."""
    return memoryview(host_memory).tobytes()
