"""One small protocol for running a model on any target.

    runner.predict(pixels)         uint8 [N, 1, H, W] -> float32 logits [N, C]
    fn = runner.infer_fn(pixels)   prepares one batch once; fn() runs it (for benchmarks);
                                   fn.images = images processed per call
    runner.name / .device / .precision   what ran where, for reports

A runner converts pixels to its model's input itself (`_prepare`): float models apply
`quant.preprocess.to_input_np`; a runner whose model takes the uint8 pixels (FPGA) passes
them through. To add a target, subclass `Runner` and implement `_prepare` and `_run`;
set `fixed_batch` when the compiled model only accepts one batch size (predict then pads
the last chunk and drops the padding).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from core.errors import UserError
from quant.preprocess import to_input_np


class Runner:
    name: str = "runner"
    device: str = "cpu"
    precision: str = "fp32"
    fixed_batch: Optional[int] = None  # None: any batch size
    default_batch: int = 64

    def _prepare(self, pixels: np.ndarray) -> Any:
        """uint8 [n, 1, H, W] -> whatever `_run` takes (default: float32 model input)."""
        return to_input_np(pixels)

    def _run(self, prepared: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, pixels: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        pixels = _check_pixels(pixels)
        step = self.fixed_batch or batch_size or self.default_batch
        outputs = []
        for start in range(0, len(pixels), step):
            chunk = pixels[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outputs.append(np.asarray(self._run(self._prepare(chunk)), dtype=np.float32)[:n])
        if not outputs:
            raise ValueError("predict() needs at least one image")
        return np.concatenate(outputs)

    def infer_fn(self, pixels: np.ndarray) -> Callable[[], Any]:
        """A no-argument callable running one inference of this batch (preprocessing done once)."""
        pixels = _check_pixels(pixels)
        if self.fixed_batch and len(pixels) != self.fixed_batch:
            raise ValueError(f"{self.name} is compiled for batch {self.fixed_batch}, got {len(pixels)} images")
        prepared = self._prepare(pixels)
        return _counted(lambda: self._run(prepared), len(pixels))

    def describe(self) -> dict:
        return {"name": self.name, "device": self.device, "precision": self.precision}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, precision={self.precision!r})"


def _counted(fn: Callable[[], Any], images: int) -> Callable[[], Any]:
    fn.images = images  # type: ignore[attr-defined]
    return fn


def _check_pixels(pixels) -> np.ndarray:
    if hasattr(pixels, "numpy"):  # torch tensor
        pixels = pixels.numpy()
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 4):
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise TypeError(f"runners take uint8 pixels [N, C, H, W], got {got}")
    return np.ascontiguousarray(pixels)


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found: build it first")
    return path


class TorchRunner(Runner):
    """A torch module in eager mode on the CPU (float or NNCF/Brevitas fake-quant)."""

    def __init__(self, model, name: str = "torch", precision: str = "fp32"):
        import torch

        self._torch = torch
        self.model = model.eval()
        self.name, self.device, self.precision = name, "cpu", precision

    def _run(self, prepared: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(prepared)).numpy()


class OrtRunner(Runner):
    """An ONNX model in onnxruntime (FP32, or Q/DQ INT8 as a correctness reference)."""

    def __init__(
        self,
        onnx_path: str | Path,
        providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
        name: Optional[str] = None,
        threads: Optional[int] = None,
        exact_qdq: bool = False,
    ):
        """exact_qdq: run Q/DQ nodes as the ONNX spec defines them (graph optimisations off),
        not fused into onnxruntime's int8 kernels, whose requantisation rounds differently.
        That checks the artifact itself against the QAT model; the fused default is for speed."""
        import onnx
        import onnxruntime as ort

        path = _require_file(Path(onnx_path), "ONNX model")
        options = ort.SessionOptions()
        if exact_qdq:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self._input = self.session.get_inputs()[0]
        batch = self._input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None
        graph = onnx.load(str(path), load_external_data=False).graph
        is_qdq = any(n.op_type == "QuantizeLinear" for n in graph.node)
        self.precision = "int8 (QDQ)" if is_qdq else "fp32"
        self.name = name or f"onnxruntime-{'int8' if is_qdq else 'fp32'}"
        self.device = self.session.get_providers()[0]

    def _run(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input.name: prepared})[0]


class OpenVINORunner(Runner):
    """An OpenVINO IR compiled for the chosen device (targets.openvino_device policy).

    batch: the IR is static batch 1; it is reshaped to `batch` at load time.
    mode "sync": one infer request, LATENCY hint. "async": THROUGHPUT hint and an
    AsyncInferQueue with the device's optimal number of requests; a predict() call keeps
    them all busy with consecutive batches.
    int8_kernels=False: every FakeQuantize runs as its formula in fp32
    (targets.openvino_exact), the IR's exact semantics on any CPU instead of the CPU's int8
    kernels (which saturate on CPUs without VNNI: core.machine).
    """

    def __init__(
        self,
        xml: str | Path,
        device_choice,
        precision_hint: Literal["f32", "default"] = "f32",
        batch: int = 1,
        mode: Literal["sync", "async"] = "sync",
        core=None,
        name: Optional[str] = None,
        console=None,
        int8_kernels: bool = True,
    ):
        import openvino as ov

        from targets.openvino_device import compile_model

        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be sync or async, got {mode!r}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        xml = _require_file(Path(xml), "OpenVINO IR")
        core = core or ov.Core()
        model = core.read_model(xml)
        shape = list(model.inputs[0].get_partial_shape().to_shape())
        if shape[0] != batch:
            shape[0] = batch
            model.reshape({model.inputs[0]: ov.PartialShape(shape)})
        is_int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.int8_kernels = int8_kernels or not is_int8
        if not self.int8_kernels:
            from targets.openvino_exact import decompose_fake_quantize

            decompose_fake_quantize(model)
        what = "the INT8 IR" if is_int8 else "the FP32 IR"
        hint = "THROUGHPUT" if mode == "async" else "LATENCY"
        self.compiled, self.device_choice = compile_model(
            core, model, device_choice, precision_hint, hint, console=console, what=what
        )
        self.fixed_batch = batch
        self.mode = mode
        self.device = ",".join(self.device_choice.execution_devices) or self.device_choice.device
        kind = "int8" if is_int8 else "fp32"
        self.precision = f"{kind} (inference precision {self.device_choice.inference_precision or 'device default'})"
        if not self.int8_kernels:
            self.precision = "int8 IR, FakeQuantize as fp32 formula (exact semantics)"
        self.name = name or f"openvino-{kind}"
        if mode == "sync":
            self._request = self.compiled.create_infer_request()
        else:
            self._queue = ov.AsyncInferQueue(self.compiled)
            self._queue.set_callback(self._collect)
            self._results: dict[int, np.ndarray] = {}

    def _run(self, prepared: np.ndarray) -> np.ndarray:
        if self.mode == "sync":
            return self._request.infer({0: prepared})[0].copy()
        return self._run_async([prepared])[0]

    def _collect(self, request, index: int) -> None:
        self._results[index] = request.get_output_tensor(0).data.copy()

    def _run_async(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        self._results = {}
        for i, chunk in enumerate(chunks):
            self._queue.start_async({0: chunk}, userdata=i)
        self._queue.wait_all()
        return [self._results[i] for i in range(len(chunks))]

    def predict(self, pixels: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        if self.mode == "sync":
            return super().predict(pixels)
        pixels = _check_pixels(pixels)
        n = len(pixels)
        padded = -(-n // self.fixed_batch) * self.fixed_batch
        if padded != n:
            pixels = np.concatenate([pixels, np.zeros((padded - n, *pixels.shape[1:]), dtype=np.uint8)])
        chunks = [self._prepare(pixels[i : i + self.fixed_batch]) for i in range(0, padded, self.fixed_batch)]
        return np.concatenate(self._run_async(chunks)).astype(np.float32)[:n]

    def infer_fn(self, pixels: np.ndarray, requests: Optional[int] = None) -> Callable[[], Any]:
        """sync: one batch per call. async: each call keeps `requests` batches in flight
        (default: the device's optimal number); fn.images counts them all."""
        if self.mode == "sync":
            return super().infer_fn(pixels)
        pixels = _check_pixels(pixels)
        if len(pixels) != self.fixed_batch:
            raise ValueError(f"{self.name} is compiled for batch {self.fixed_batch}, got {len(pixels)} images")
        chunks = [self._prepare(pixels)] * (requests or len(self._queue))
        return _counted(lambda: self._run_async(chunks), len(pixels) * len(chunks))

    def describe(self) -> dict:
        """name, device (where it ran), precision, batch, mode, and the device choice:
        requested, compiled_for, available, fallback_reason, execution_devices, inference_precision."""
        choice = self.device_choice.to_dict()
        choice["compiled_for"] = choice.pop("device")
        return {**super().describe(), "batch": self.fixed_batch, "mode": self.mode, "int8_kernels": self.int8_kernels,
                **choice}
