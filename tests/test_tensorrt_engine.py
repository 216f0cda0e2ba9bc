"""The GPU target: engine building against a fake of the tensorrt API surface we use, the
generated trtexec/polygraphy commands, and (where TensorRT and a GPU exist) a real engine.

The fake records every call. Its "engine" carries the ONNX it was built from and runs it
with onnxruntime, so the runner's batching and buffer plumbing are checked against real
logits, not against the fake's own numbers.
"""
from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compilers.tensorrt.commands import write_trt_commands
from core.errors import UserError
from compilers.tensorrt import engine as te
from targets import tensorrt_runner as tr
from test_qdq_layout import export_nncf_qdq, valid_model


# --- a fake tensorrt --------------------------------------------------------------------


class FakeMemory:
    """Device memory for the fake: pointers are keys into one dict."""

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}
        self.next_ptr = 0x1000
        self.device_name = "Fake GPU"

    def _add(self, array):
        self.next_ptr += 0x100
        self.buffers[self.next_ptr] = array
        return self.next_ptr

    # the TorchCudaIO interface
    def upload(self, array):
        return self._add(np.array(array, dtype=np.float32, copy=True))

    def empty(self, shape):
        return self._add(np.full(shape, np.nan, np.float32))

    def download(self, ptr):
        return self.buffers[ptr].copy()

    def pointer(self, ptr):
        return ptr

    def stream(self):
        return 7

    def synchronize(self):
        pass


def fake_module() -> types.ModuleType:
    """An empty `tensorrt` module (a __spec__, so importlib.util.find_spec probes, as in
    torch._dynamo, keep working while it is in sys.modules)."""
    module = types.ModuleType("tensorrt")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    return module


def make_fake_trt(memory: FakeMemory, trt11: bool = False) -> types.ModuleType:
    trt = fake_module()
    trt.__version__ = "11.0.0-fake" if trt11 else "10.9.0-fake"
    trt.calls = []  # (what, details) in call order
    trt.fail_build = False
    trt.parse_errors = []
    trt.output_dtype = "float32"
    log = trt.calls.append

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            log(("Logger", severity))

    class NetworkDefinitionCreationFlag:
        pass

    class BuilderFlag:
        FP16 = "FP16"

    if not trt11:  # TensorRT 11: always strongly typed, no weak INT8 flag
        NetworkDefinitionCreationFlag.STRONGLY_TYPED = 1
        BuilderFlag.INT8 = "INT8"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    trt.float32, trt.float16 = "float32", "float16"

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.onnx = flags, None

        def get_input(self, i):
            inp = self.onnx.graph.input[i]
            dims = inp.type.tensor_type.shape.dim
            return Tensor(inp.name, tuple(d.dim_value if d.dim_value else -1 for d in dims))

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            log(("parse_from_file", path))
            self.network.onnx = onnx.load(path)
            self.network.onnx_path = path
            return not trt.parse_errors

        @property
        def num_errors(self):
            return len(trt.parse_errors)

        def get_error(self, i):
            return trt.parse_errors[i]

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(self.data + b"+tactics")

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache = [], [], None

        def set_memory_pool_limit(self, pool, size):
            log(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            log(("set_flag", flag))
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            log(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            log(("set_timing_cache", cache.data, ignore_mismatch))
            if cache.data.startswith(b"OTHER-GPU"):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log(("set_shape", name, lo, opt, hi))
            self.shapes = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            log(("Builder",))

        def create_network(self, flags):
            log(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log(("build_serialized_network", tuple(config.flags), len(config.profiles)))
            if trt.fail_build:
                return None
            return memoryview(b"ENGINE" + network.onnx.SerializeToString())

    class Context:
        """Runs the ONNX inside the fake engine with onnxruntime, on FakeMemory buffers."""

        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}

        def set_input_shape(self, name, shape):
            log(("set_input_shape", name, tuple(shape)))
            lo, _, hi = engine_profile(self.engine)
            assert lo[0] <= shape[0] <= hi[0], f"batch {shape[0]} outside the profile"
            self.shape = tuple(shape)

        def get_tensor_shape(self, name):
            return (self.shape[0], self.engine.classes)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            log(("execute_async_v3", stream, self.shape[0]))
            x = memory.buffers[self.addresses["input"]]
            assert x.shape == self.shape
            out = self.engine.session.run(None, {"input": x})[0]
            memory.buffers[self.addresses["logits"]][...] = out
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, model):
            self.model = model
            self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            self.classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.output_dtype if name == "logits" else trt.float32

        def get_tensor_shape(self, name):
            dims = self.model.graph.input[0].type.tensor_type.shape.dim
            return tuple(d.dim_value if d.dim_value else -1 for d in dims)

        def get_tensor_profile_shape(self, name, index):
            return engine_profile(self)

        def create_execution_context(self):
            return Context(self)

    def engine_profile(engine):
        chw = engine.get_tensor_shape("input")[1:]
        return [(1, *chw), (16, *chw), (16, *chw)]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if not data.startswith(b"ENGINE"):
                return None
            return Engine(onnx.load_from_string(data[len(b"ENGINE"):]))

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, OnnxParser, Builder, Runtime):
        setattr(trt, obj.__name__, obj)
    return trt


@pytest.fixture
def memory():
    return FakeMemory()


@pytest.fixture
def fake_trt(monkeypatch, memory):
    trt = make_fake_trt(memory)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def qdq_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(valid_model(), str(path))
    return path


def _calls(trt, what):
    return [c for c in trt.calls if c[0] == what]


# --- build_engine -----------------------------------------------------------------------


def test_build_strongly_typed_engine_with_profile_and_timing_cache(fake_trt, qdq_onnx, tmp_path):
    engine, cache = tmp_path / "out" / "model.engine", tmp_path / "out" / "timing.cache"
    build = te.build_engine(qdq_onnx, engine, cache)
    assert _calls(fake_trt, "create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED only
    assert _calls(fake_trt, "parse_from_file") == [("parse_from_file", str(qdq_onnx))]
    assert _calls(fake_trt, "set_flag") == []  # no precision flags with strong typing
    assert _calls(fake_trt, "set_shape") == [("set_shape", "input", (1, 1, 8, 8), (16, 1, 8, 8), (16, 1, 8, 8))]
    assert _calls(fake_trt, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 1024 << 20)]
    assert _calls(fake_trt, "build_serialized_network") == [("build_serialized_network", (), 1)]
    assert engine.read_bytes() == b"ENGINE" + onnx.load(str(qdq_onnx)).SerializeToString()
    # no cache yet: an empty one is created, and the tuned one saved after the build
    assert _calls(fake_trt, "create_timing_cache") == [("create_timing_cache", b"")]
    assert cache.read_bytes() == b"+tactics"
    assert build.profile == [[1, 1, 8, 8], [16, 1, 8, 8], [16, 1, 8, 8]]
    assert (build.input_name, build.input_shape, build.strongly_typed) == ("input", [-1, 1, 8, 8], True)
    assert build.timing_cache_loaded is False and build.notes == []
    # the rebuild starts from the saved cache
    fake_trt.calls.clear()
    again = te.build_engine(qdq_onnx, engine, cache)
    assert _calls(fake_trt, "create_timing_cache") == [("create_timing_cache", b"+tactics")]
    assert _calls(fake_trt, "set_timing_cache") == [("set_timing_cache", b"+tactics", False)]
    assert again.timing_cache_loaded is True and cache.read_bytes() == b"+tactics+tactics"
    assert sorted(p.name for p in engine.parent.iterdir()) == ["model.engine", "timing.cache"]


def test_weakly_typed_build_sets_int8_and_fp16(fake_trt, qdq_onnx, tmp_path):
    te.build_engine(qdq_onnx, tmp_path / "m.engine", batches=(2, 8, 32), strongly_typed=False)
    assert _calls(fake_trt, "create_network") == [("create_network", 0)]
    assert [c[1] for c in _calls(fake_trt, "set_flag")] == ["INT8", "FP16"]
    assert _calls(fake_trt, "set_shape")[0][2:] == ((2, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))
    assert _calls(fake_trt, "create_timing_cache") == [("create_timing_cache", b"")]  # in memory, not saved


def test_tensorrt_11_is_always_strongly_typed(monkeypatch, memory, qdq_onnx, tmp_path):
    trt = make_fake_trt(memory, trt11=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    te.build_engine(qdq_onnx, tmp_path / "m.engine")
    assert _calls(trt, "create_network") == [("create_network", 0)]
    with pytest.raises(UserError, match="no weakly-typed INT8 build"):
        te.build_engine(qdq_onnx, tmp_path / "m.engine", strongly_typed=False)


def test_parser_errors_are_a_user_error_and_write_nothing(fake_trt, qdq_onnx, tmp_path):
    fake_trt.parse_errors = ["In node 3 (Conv1): unsupported per-channel axis", "second problem"]
    with pytest.raises(UserError, match=r"parser rejected the model: In node 3 \(Conv1\): unsupported per-channel axis \(\+1 more\)"):
        te.build_engine(qdq_onnx, tmp_path / "m.engine", tmp_path / "t.cache")
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "t.cache").exists()


def test_failed_build_keeps_the_previous_engine(fake_trt, qdq_onnx, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE-previous")
    fake_trt.fail_build = True
    with pytest.raises(RuntimeError, match="failed to build"):
        te.build_engine(qdq_onnx, engine)
    assert engine.read_bytes() == b"ENGINE-previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "model.onnx"]


def test_timing_cache_from_another_gpu_is_replaced(fake_trt, qdq_onnx, tmp_path):
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"OTHER-GPU tactics")
    build = te.build_engine(qdq_onnx, tmp_path / "m.engine", cache)
    assert [c[1] for c in _calls(fake_trt, "set_timing_cache")] == [b"OTHER-GPU tactics", b""]
    assert build.timing_cache_loaded is False and "another GPU" in build.notes[0]
    assert cache.read_bytes() == b"+tactics"


def test_static_batch_onnx_builds_without_a_profile(fake_trt, tmp_path):
    model = valid_model()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(tmp_path / "static.onnx"))
    build = te.build_engine(tmp_path / "static.onnx", tmp_path / "m.engine")
    assert _calls(fake_trt, "set_shape") == [] and build.profile is None
    assert build.notes == ["static input [4, 1, 8, 8]: the engine runs batch 4 only"]


def test_build_user_errors(fake_trt, qdq_onnx, tmp_path):
    with pytest.raises(UserError, match="not found"):
        te.build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        te.build_engine(qdq_onnx, tmp_path / "m.engine", batches=(4, 2, 16))


# --- availability -----------------------------------------------------------------------


def test_tensorrt_missing(monkeypatch, qdq_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    assert te.tensorrt_available() == (False, te.INSTALL_HINT)
    with pytest.raises(UserError, match="tensorrt is not installed"):
        te.build_engine(qdq_onnx, tmp_path / "m.engine")
    assert tr.build_and_measure(qdq_onnx, tmp_path) == {"engine": None, "skipped": te.INSTALL_HINT}
    with pytest.raises(UserError, match="gpu.require_engine is true but tensorrt is not installed"):
        tr.build_and_measure(qdq_onnx, tmp_path, require_engine=True)


def test_stub_package_and_missing_cuda(monkeypatch, fake_trt):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert te.tensorrt_available() == (False, te.NO_CUDA)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    assert te.tensorrt_available() == (True, "TensorRT 10.9.0-fake on Fake GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_module())  # PyPI stub: no library
    ok, reason = te.tensorrt_available()
    assert not ok and "stub" in reason


# --- the runner -------------------------------------------------------------------------


def test_runner_batches_within_the_profile_and_matches_onnxruntime(fake_trt, memory, qdq_onnx, tmp_path):
    from targets.runners import OrtRunner

    te.build_engine(qdq_onnx, tmp_path / "m.engine")
    runner = tr.TensorRTRunner(tmp_path / "m.engine", io=memory)
    assert (runner.max_batch, runner.input_chw, runner.fixed_batch) == (16, (1, 8, 8), None)
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    fake_trt.calls.clear()
    got = runner.predict(pixels)
    assert [c[1:] for c in _calls(fake_trt, "set_input_shape")] == [("input", (16, 1, 8, 8)), ("input", (16, 1, 8, 8)), ("input", (8, 1, 8, 8))]
    assert all(c[1] == 7 for c in _calls(fake_trt, "execute_async_v3"))  # the IO's stream
    np.testing.assert_array_equal(got, OrtRunner(qdq_onnx).predict(pixels, batch_size=40))
    assert runner.describe() == {"name": "tensorrt-int8", "device": "cuda:0 (Fake GPU)", "precision": "int8 (explicit QDQ)"}

    fn = runner.infer_fn(pixels[:16])
    uploads = len(memory.buffers)
    fn(), fn()
    assert fn.images == 16 and len(memory.buffers) == uploads + 2  # an output buffer per call, no re-upload
    with pytest.raises(ValueError, match="at most 16"):
        runner.infer_fn(pixels[:17])
    rates = tr.measure_throughput(runner, batches=(1, 16), seconds=0.01, rounds=2)
    assert set(rates) == {1, 16} and all(r > 0 for r in rates.values())


def test_runner_refuses_an_engine_it_cannot_load(fake_trt, memory, tmp_path):
    (tmp_path / "m.engine").write_bytes(b"built by another TensorRT")
    with pytest.raises(UserError, match="rebuild it here"):
        tr.TensorRTRunner(tmp_path / "m.engine", io=memory)
    with pytest.raises(UserError, match="not found"):
        tr.TensorRTRunner(tmp_path / "missing.engine", io=memory)
    onnx.save(valid_model(), str(tmp_path / "m.onnx"))
    te.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    fake_trt.output_dtype = "float16"  # e.g. built from an FP16-typed ONNX
    with pytest.raises(UserError, match="expected float32 input and output"):
        tr.TensorRTRunner(tmp_path / "m.engine", io=memory)


# --- trtexec / polygraphy commands ------------------------------------------------------


def test_commands_for_a_dynamic_batch_model(qdq_onnx):
    cmds = write_trt_commands(qdq_onnx)
    assert cmds.build == [
        "trtexec", "--onnx=model.onnx", "--stronglyTyped",
        "--minShapes=input:1x1x8x8", "--optShapes=input:16x1x8x8", "--maxShapes=input:16x1x8x8",
        "--saveEngine=model.engine", "--timingCacheFile=timing.cache", "--skipInference",
    ]  # fmt: skip
    assert cmds.bench == [
        ["trtexec", "--loadEngine=model.engine", "--shapes=input:1x1x8x8"],
        ["trtexec", "--loadEngine=model.engine", "--shapes=input:16x1x8x8"],
    ]
    assert cmds.compare == [
        "polygraphy", "run", "model.onnx", "--trt", "--onnxrt", "--strongly-typed",
        "--trt-min-shapes", "input:[1,1,8,8]", "--trt-opt-shapes", "input:[16,1,8,8]", "--trt-max-shapes", "input:[16,1,8,8]",
        "--input-shapes", "input:[16,1,8,8]", "--val-range", "input:[0,1]", "--data-loader-seed", "0",
        "--atol", cmds.compare[-5], "--rtol", "0", "--check-error-stat", "max",
    ]  # fmt: skip
    # atol: 3% of the largest |logit| onnxruntime gives on 16 random inputs
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    logits = ort.InferenceSession(str(qdq_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float(cmds.compare[-5]) == pytest.approx(0.03 * np.abs(logits).max(), rel=1e-2)
    script = cmds.script.read_text()
    assert cmds.script == qdq_onnx.parent / "trt_build.sh" and cmds.script.stat().st_mode & 0o111
    assert 'cd "$(dirname "$0")"' in script and "'input:[1,1,8,8]'" in script  # brackets quoted for bash
    assert subprocess.run(["bash", "-n", str(cmds.script)]).returncode == 0
    readme = cmds.readme.read_text()
    assert "--stronglyTyped" in readme and "batch 1..16" in readme and "strongly typed" in readme


def test_commands_for_fixed_batch_and_weak_typing(tmp_path):
    model = valid_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    cmds = write_trt_commands(tmp_path / "fixed.onnx", strongly_typed=False, atol=0.1)
    assert "--int8" in cmds.build and "--fp16" in cmds.build and "--stronglyTyped" not in cmds.build
    assert [a for a in cmds.build if "Shapes" in a] == [f"--{k}Shapes=input:4x1x8x8" for k in ("min", "opt", "max")]
    assert cmds.bench == [["trtexec", "--loadEngine=model.engine", "--shapes=input:4x1x8x8"]]
    assert cmds.compare[cmds.compare.index("--atol") + 1] == "0.1"
    assert "--int8" in cmds.compare and "--strongly-typed" not in cmds.compare


# --- a real engine (machines with TensorRT and a GPU) ------------------------------------


def test_real_engine_matches_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt")
    ok, reason = te.tensorrt_available()
    if not ok:
        pytest.skip(reason)
    from targets.runners import OrtRunner

    _, _, onnx_path, _ = export_nncf_qdq(tmp_path)
    build = te.build_engine(onnx_path, tmp_path / "model.engine", tmp_path / "timing.cache")
    runner = tr.TensorRTRunner(build.engine)
    pixels = np.random.default_rng(3).integers(0, 256, size=(128, *runner.input_chw), dtype=np.uint8)
    expected = OrtRunner(onnx_path).predict(pixels)
    got = runner.predict(pixels)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    rates = tr.measure_throughput(runner, batches=(1, 16))
    assert rates[1] > 0 and rates[16] > 0
    rebuilt = te.build_engine(onnx_path, tmp_path / "model.engine", tmp_path / "timing.cache")
    assert rebuilt.timing_cache_loaded
