"""Build and run a TensorRT INT8 engine from a finalized QDQ ONNX (NVIDIA GPU machines).

    tensorrt_available() -> (bool, reason)
    build_engine(onnx_path, engine_path, timing_cache=None, batches=(1, 16, 16)) -> EngineBuild
    TensorRTRunner(engine_path)        targets.runners protocol: predict(pixels) -> logits
    measure_throughput(runner, batches=(1, 16)) -> {batch: images/s}
    build_and_measure(onnx_path, out_dir, require_engine) -> dict   (the GPU step)

`tensorrt` is imported inside the functions, so this module imports anywhere. Device
memory goes through torch.cuda (a CUDA build of torch on the GPU machine; no
cuda-python needed). TensorRT 10 API: networks are always explicit-batch; a QDQ network
is built STRONGLY_TYPED with no precision flags (NVIDIA's guidance for explicit
quantization; TensorRT 11 dropped the flag: always strongly typed). strongly_typed=False
is the TensorRT 10 weakly-typed build (INT8 + FP16 flags: layers outside Q/DQ may run in
FP16). An engine is tied to the TensorRT version and GPU that built it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from qdeploy import atomic
from qdeploy.errors import UserError
from targets.runners import Runner

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


# --- run --------------------------------------------------------------------------------


class TorchCudaIO:
    """Device buffers and the stream, through torch.cuda (TensorRT reads raw pointers)."""

    def __init__(self):
        ok, reason = _cuda_device()
        if not ok:
            raise UserError(f"cannot run a TensorRT engine: {reason}")
        import torch

        self.torch = torch
        self.device_name = torch.cuda.get_device_name(0)

    def upload(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).cuda()

    def empty(self, shape: tuple[int, ...]):
        return self.torch.empty(shape, dtype=self.torch.float32, device="cuda")

    def download(self, buffer) -> np.ndarray:
        return buffer.cpu().numpy()

    def pointer(self, buffer) -> int:
        return buffer.data_ptr()

    def stream(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream  # ordered after the uploads

    def synchronize(self) -> None:
        self.torch.cuda.current_stream().synchronize()


class TensorRTRunner(Runner):
    """A serialized TensorRT engine with one float32 input and one output."""

    def __init__(self, engine_path: str | Path, io=None, name: Optional[str] = None):
        trt = require_tensorrt()
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise UserError(f"TensorRT engine {engine_path} not found: build it first")
        self.io = io or TorchCudaIO()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"{engine_path} does not load with TensorRT {trt.__version__} on this GPU: "
                "an engine only runs with the TensorRT version and GPU model that built it; rebuild it here"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{engine_path}: expected one input and one output, found {inputs} and {outputs}")
        self.input, self.output = inputs[0], outputs[0]
        dtypes = {n: self.engine.get_tensor_dtype(n) for n in names}
        if any(d != trt.float32 for d in dtypes.values()):
            raise UserError(f"{engine_path}: expected float32 input and output, found {dtypes}; build it from the FP32-typed QDQ ONNX")
        shape = [int(d) for d in self.engine.get_tensor_shape(self.input)]
        if shape[0] == -1:
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input, 0)[2][0])
        else:
            self.max_batch = self.fixed_batch = shape[0]
        self.input_chw = tuple(shape[1:])
        self.default_batch = self.max_batch
        self.name = name or "tensorrt-int8"
        self.device = f"cuda:0 ({self.io.device_name})"
        self.precision = "int8 (explicit QDQ)"

    def _execute(self, x_device, n: int):
        """Run one batch already on the device; returns the output buffer (synchronized)."""
        self.context.set_input_shape(self.input, (n, *self.input_chw))
        out = self.io.empty(tuple(int(d) for d in self.context.get_tensor_shape(self.output)))
        self.context.set_tensor_address(self.input, self.io.pointer(x_device))
        self.context.set_tensor_address(self.output, self.io.pointer(out))
        if not self.context.execute_async_v3(self.io.stream()):
            raise RuntimeError(f"TensorRT failed to run {self.name} on a batch of {n}")
        self.io.synchronize()
        return out

    def _run(self, prepared: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(prepared), self.max_batch):
            chunk = np.ascontiguousarray(prepared[start : start + self.max_batch], dtype=np.float32)
            outs.append(self.io.download(self._execute(self.io.upload(chunk), len(chunk))))
        return np.concatenate(outs)

    def infer_fn(self, pixels: np.ndarray) -> Callable[[], Any]:
        """One call = one batch on the GPU; the input stays on the device (compute only)."""
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 4):
            raise TypeError("infer_fn takes uint8 pixels [N, C, H, W]")
        if len(pixels) > self.max_batch:
            raise ValueError(f"{self.name} takes at most {self.max_batch} images per batch, got {len(pixels)}")
        x, n = self.io.upload(self._prepare(pixels)), len(pixels)

        def fn():
            return self._execute(x, n)

        fn.images = n
        return fn


def measure_throughput(
    runner: TensorRTRunner, batches: tuple[int, ...] = (1, 16), seconds: float = 0.5, rounds: int = 5, seed: int = 0
) -> dict[int, float]:
    """Median images/s per batch size, GPU compute only (input already on the device)."""
    rng = np.random.default_rng(seed)
    result = {}
    for b in batches:
        fn = runner.infer_fn(rng.integers(0, 256, size=(b, *runner.input_chw), dtype=np.uint8))
        for _ in range(10):
            fn()
        rates = []
        for _ in range(rounds):
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds or calls == 0:
                fn()
                calls += 1
            rates.append(calls * fn.images / elapsed)
        result[b] = float(np.median(rates))
    return result


def build_and_measure(
    onnx_path: str | Path, out_dir: str | Path, require_engine: bool = False, batches: tuple[int, int, int] = (1, 16, 16)
) -> dict:
    """The GPU step: build + benchmark where TensorRT and a GPU exist, else say why not.

    require_engine (recipe gpu.require_engine): a machine without them is an error.
    """
    ok, reason = tensorrt_available()
    if not ok:
        if require_engine:
            raise UserError(f"gpu.require_engine is true but {reason}; set gpu.require_engine: false to skip the engine here")
        return {"engine": None, "skipped": reason}
    out_dir = Path(out_dir)
    build = build_engine(onnx_path, out_dir / "model.engine", out_dir / "timing.cache", batches)
    runner = TensorRTRunner(build.engine)
    bench = measure_throughput(runner, batches=tuple(sorted({batches[0], batches[2]})))
    return {"engine": build.to_dict(), "runner": runner.describe(), "images_per_s": {str(k): v for k, v in bench.items()}}
