"""Run a TensorRT engine (NVIDIA GPU machines): the runner protocol and the GPU step.

    TensorRTRunner(engine_path)        targets.runners protocol: predict(pixels) -> logits
    measure_throughput(runner, batches=(1, 16)) -> {batch: images/s}
    build_and_measure(onnx_path, out_dir, require_engine) -> dict   (the GPU step)

Device memory goes through torch.cuda (a CUDA build of torch on the GPU machine; no
cuda-python needed). Engines are built by compilers/tensorrt/engine.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from compilers.tensorrt.engine import _cuda_device, build_engine, require_tensorrt, tensorrt_available
from core import layout
from core.errors import UserError
from targets.runners import Runner


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
    build = build_engine(onnx_path, out_dir / layout.TRT_ENGINE, out_dir / "timing.cache", batches)
    runner = TensorRTRunner(build.engine)
    bench = measure_throughput(runner, batches=tuple(sorted({batches[0], batches[2]})))
    return {"engine": build.to_dict(), "runner": runner.describe(), "images_per_s": {str(k): v for k, v in bench.items()}}
