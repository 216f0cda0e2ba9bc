"""OpenVINO IR, the device policy and the runners, on the CPU (no NPU on this machine)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from compilers.openvino_ir import describe_ir, to_openvino_ir
from core.errors import UserError
from quant.nncf_qat import quantize_int8
from core import machine
from core.compare import one_step_bound
from quant.nncf_qat import head_input_step
from quant.preprocess import to_input
from targets.openvino_device import (
    DeviceChoice,
    _read_precision,
    compile_model,
    cpu_int8_kernels_faithful,
    select_device,
)
from targets.openvino_exact import decompose_fake_quantize
from targets.runners import OpenVINORunner, OrtRunner, Runner, TorchRunner
from test_nncf_qat import SIZE, calib_batches, toy_pixels, trained_tiny

SHAPE = (1, 1, SIZE, SIZE)


@pytest.fixture(scope="module")
def float_model():
    return trained_tiny()


@pytest.fixture(scope="module")
def int8_model(float_model):
    return quantize_int8(float_model, calib_batches(), "openvino", subset_size=32)


@pytest.fixture(scope="module")
def int8_ir(int8_model, tmp_path_factory):
    return to_openvino_ir(int8_model, SHAPE, tmp_path_factory.mktemp("ir") / "int8.xml")


@pytest.fixture(scope="module")
def float_ir(float_model, tmp_path_factory):
    return to_openvino_ir(float_model, SHAPE, tmp_path_factory.mktemp("ir") / "fp32.xml")


@pytest.fixture(scope="module")
def pixels():
    return toy_pixels(128, seed=4242)[0]


def cpu_choice():
    return select_device("cpu")


def quiet():
    buf = io.StringIO()
    return Console(file=buf, width=200, highlight=False), buf


# --- the IR ----------------------------------------------------------------------------


def test_int8_ir_is_static_and_quantized(int8_ir, float_model):
    info = describe_ir(int8_ir)
    assert info.input_shape == SHAPE
    assert info.is_int8 and info.fake_quantize >= 4
    assert info.int8_constants == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in float_model.modules())
    assert sorted(p.name for p in int8_ir.parent.iterdir()) == ["int8.bin", "int8.xml"]  # no temp leftovers


def one_step(int8_model, pixels) -> float:
    """The bound two exact INT8 executions must meet (core.compare.one_step_bound): every
    input of the head at most one quantization step apart."""
    step, weight = head_input_step(int8_model, to_input(torch.from_numpy(pixels[:1])))
    return one_step_bound(step, weight.numpy())


@pytest.mark.parametrize("int8_kernels", [False, True], ids=["exact-fp32-fakequantize", "cpu-int8-kernels"])
def test_int8_ir_on_cpu_matches_the_nncf_torch_model(int8_ir, int8_model, pixels, int8_kernels):
    if int8_kernels and not cpu_int8_kernels_faithful(machine.identity(), overflow_fix=False):
        pytest.skip(f"this CPU's int8 kernels saturate ({machine.summary(machine.identity())}): "
                    "test_cpu_isa covers that path")
    ov_runner = OpenVINORunner(int8_ir, cpu_choice(), precision_hint="f32", batch=16, int8_kernels=int8_kernels)
    ref = TorchRunner(int8_model).predict(pixels)
    out = ov_runner.predict(pixels)
    assert out.shape == ref.shape == (128, 2) and out.dtype == np.float32
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    bound = one_step(int8_model, pixels)
    assert bound < 0.1 * np.abs(ref).max()  # the bound is tight enough to mean something
    assert np.abs(out - ref).max() <= bound
    assert ov_runner.device_choice.inference_precision == "f32"
    assert ov_runner.device_choice.execution_devices == ("CPU",)
    assert ov_runner.describe()["int8_kernels"] is int8_kernels


def test_exact_path_leaves_no_fake_quantize_and_keeps_the_artifact(int8_ir):
    import openvino as ov

    before = int8_ir.read_bytes()
    model = ov.Core().read_model(int8_ir)
    n = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    assert decompose_fake_quantize(model) == n >= 4
    assert not any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    assert int8_ir.read_bytes() == before


def test_float_ir_with_f32_hint_matches_torch(float_ir, float_model, pixels):
    assert not describe_ir(float_ir).is_int8
    runner = OpenVINORunner(float_ir, cpu_choice(), precision_hint="f32", batch=16)
    ref = TorchRunner(float_model).predict(pixels)
    assert np.abs(runner.predict(pixels) - ref).max() < 1e-4
    assert runner.precision == "fp32 (inference precision f32)"


def test_default_precision_hint_is_recorded(float_ir):
    import os

    try:
        runner = OpenVINORunner(float_ir, cpu_choice(), precision_hint="default")
    except RuntimeError:
        if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # the core offers the CPU's bf16, the capped oneDNN has none
            pytest.skip("default (bf16) precision cannot compile under ONEDNN_MAX_CPU_ISA on a bf16 CPU")
        raise
    # what the compiled model reports (bf16 on CPUs whose kernels have it, f32 otherwise, e.g.
    # under ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU), not the core's claim about the device
    # (some compiled CPU models do not answer the query: then nothing is recorded, never a guess)
    recorded = runner.device_choice.inference_precision
    assert recorded == _read_precision(runner.compiled) and recorded in (None, "f32", "bf16", "f16")


def test_ir_write_failure_keeps_the_previous_pair(tmp_path, float_model, monkeypatch):
    import openvino as ov

    xml = to_openvino_ir(float_model, SHAPE, tmp_path / "m.xml")
    before = (xml.read_bytes(), xml.with_suffix(".bin").read_bytes())

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ov, "save_model", broken)
    with pytest.raises(OSError):
        to_openvino_ir(float_model, SHAPE, tmp_path / "m.xml")
    assert (xml.read_bytes(), xml.with_suffix(".bin").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_ir_needs_a_static_batch_1_shape(float_model, tmp_path):
    with pytest.raises(ValueError, match="static"):
        to_openvino_ir(float_model, (16, 1, SIZE, SIZE), tmp_path / "m.xml")


# --- device policy ---------------------------------------------------------------------


class FakeCompiled:
    def __init__(self, device):
        self.device = device

    def get_property(self, name):
        return {"EXECUTION_DEVICES": [self.device], "INFERENCE_PRECISION_HINT": "f16"}[name]


class FakeCore:
    def __init__(self, devices, broken=()):
        self.available_devices = list(devices)
        self.broken = broken
        self.compiled_for = []

    def compile_model(self, model, device, config):
        self.compiled_for.append((device, dict(config)))
        if device in self.broken:
            raise RuntimeError(
                "Exception from src/inference/src/cpp/core.cpp:117:\n"
                "Exception from src/plugins/intel_npu/src/plugin.cpp:54:\nZe driver not loaded"
            )
        return FakeCompiled(device)


def test_auto_without_npu_falls_back_to_cpu_with_one_line():
    console, buf = quiet()
    choice = select_device("auto", FakeCore(["CPU"]), console=console)
    assert (choice.device, choice.requested) == ("CPU", "auto")
    assert choice.fallback_reason == "NPU not found (available: ['CPU'])"
    assert buf.getvalue() == "NPU not found (available: ['CPU']); running the INT8 IR on CPU\n"


@pytest.mark.parametrize("requested", ["auto", "npu"])
def test_npu_is_used_when_listed(requested):
    console, buf = quiet()
    choice = select_device(requested, FakeCore(["CPU", "GPU", "NPU"]), console=console)
    assert choice.device == "NPU" and choice.fallback_reason is None and buf.getvalue() == ""


def test_explicit_npu_without_device_is_a_user_error():
    with pytest.raises(UserError) as err:
        select_device("npu", FakeCore(["CPU", "GPU"]))
    msg = str(err.value)
    assert msg == (
        "NPU requested but OpenVINO lists no NPU device (available: ['CPU', 'GPU']); "
        "install the Intel NPU driver or use npu.device: cpu"
    )
    assert "\n" not in msg


def test_cpu_is_cpu_even_with_an_npu():
    console, buf = quiet()
    choice = select_device("cpu", FakeCore(["CPU", "NPU"]), console=console)
    assert choice.device == "CPU" and choice.fallback_reason is None and buf.getvalue() == ""


def test_unknown_device_is_a_user_error():
    with pytest.raises(UserError, match="auto, npu or cpu"):
        select_device("AUTO:NPU,CPU", FakeCore(["CPU"]))


def test_compile_records_execution_device_and_sends_f32_hint_to_cpu_only():
    core = FakeCore(["CPU", "NPU"])
    _, npu = compile_model(core, "m.xml", select_device("npu", core), "f32")
    _, cpu = compile_model(core, "m.xml", select_device("cpu", core), "f32")
    assert npu.execution_devices == ("NPU",) and cpu.execution_devices == ("CPU",)
    assert core.compiled_for == [
        ("NPU", {"PERFORMANCE_HINT": "LATENCY"}),
        ("CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}),
    ]
    assert all("AUTO" not in d and "MULTI" not in d for d, _ in core.compiled_for)


def test_npu_compile_failure_auto_falls_back_npu_raises():
    core = FakeCore(["CPU", "NPU"], broken=("NPU",))
    console, buf = quiet()
    _, choice = compile_model(core, "m.xml", select_device("auto", core), "f32", console=console)
    assert choice.device == "CPU" and choice.execution_devices == ("CPU",)
    assert choice.fallback_reason == "NPU compile failed (Ze driver not loaded)"
    assert buf.getvalue() == "NPU compile failed (Ze driver not loaded); running the INT8 IR on CPU\n"
    with pytest.raises(UserError, match=r"^NPU compile failed \(Ze driver not loaded\); update the Intel NPU driver"):
        compile_model(core, "m.xml", select_device("npu", core), "f32")


def test_real_core_here_runs_on_cpu(int8_ir):
    import openvino as ov

    console, buf = quiet()
    choice = select_device("auto", ov.Core(), console=console)
    runner = OpenVINORunner(int8_ir, choice, batch=1)
    if "NPU" in ov.Core().available_devices:
        assert runner.device_choice.execution_devices == ("NPU",)
    else:
        assert runner.device == "CPU" and "running the INT8 IR on CPU" in buf.getvalue()
    info = runner.describe()
    assert info["execution_devices"] == runner.device_choice.execution_devices
    assert info["device"] == ",".join(info["execution_devices"]) and info["compiled_for"] == runner.device_choice.device
    assert isinstance(runner.device_choice, DeviceChoice)


# --- runners ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float_onnx(float_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    torch.onnx.export(
        float_model, torch.zeros(SHAPE), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def test_runners_share_shapes_and_agree(float_model, float_ir, float_onnx, pixels):
    px = pixels[:37]  # not a multiple of the OpenVINO batch: the last chunk is padded
    runners: list[Runner] = [
        TorchRunner(float_model),
        OrtRunner(float_onnx),
        OpenVINORunner(float_ir, cpu_choice(), batch=16),
        OpenVINORunner(float_ir, cpu_choice(), batch=16, mode="async"),
    ]
    outputs = [r.predict(px) for r in runners]
    for runner, out in zip(runners, outputs):
        assert out.shape == (37, 2) and out.dtype == np.float32, runner
        assert np.abs(out - outputs[0]).max() < 1e-4, runner
        assert set(runner.describe()) >= {"name", "device", "precision"}
    assert [r.name for r in runners] == ["torch", "onnxruntime-fp32", "openvino-fp32", "openvino-fp32"]


def test_infer_fn_runs_one_prepared_batch(float_model, float_ir, pixels):
    batch = pixels[:16]
    fn = TorchRunner(float_model).infer_fn(batch)
    assert fn().shape == (16, 2) and fn.images == 16
    sync = OpenVINORunner(float_ir, cpu_choice(), batch=16)
    assert sync.infer_fn(batch)().shape == (16, 2)
    async_runner = OpenVINORunner(float_ir, cpu_choice(), batch=16, mode="async")
    fn = async_runner.infer_fn(batch, requests=3)
    assert len(fn()) == 3 and fn.images == 48
    with pytest.raises(ValueError, match="batch 16"):
        sync.infer_fn(pixels[:8])


def test_runner_input_and_file_errors(float_model, tmp_path, pixels):
    with pytest.raises(TypeError, match="uint8"):
        TorchRunner(float_model).predict(pixels.astype(np.float32))
    with pytest.raises(UserError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="not found"):
        OpenVINORunner(tmp_path / "missing.xml", cpu_choice())
