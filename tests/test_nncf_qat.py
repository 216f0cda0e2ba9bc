"""NNCF INT8 quantization: both modes' integer formats, QAT, exact checkpoints, Q/DQ ONNX.

A small stand-in CNN (stem conv, residual block with a depthwise conv, linear head) is
trained for a few steps on a toy task (bright square = defect), so its logits mean
something before it is quantized.
"""
from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from core.errors import UserError
from quant.nncf_qat import (
    export_qdq_onnx,
    load_nncf_checkpoint,
    quantize_int8,
    quantizer_summary,
    save_nncf_checkpoint,
)
from quant.preprocess import to_input

SIZE = 32


def finetune_steps(
    qmodel: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float = 1e-4, seed: int = 0
) -> list[float]:
    """`steps` SGD steps of cross-entropy on (float input, label) batches; returns the losses
    (test scaffolding: the real loop is quant.train.fit)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in qmodel.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses: list[float] = []
    qmodel.train()
    for step, (x, y) in enumerate(batches):
        if step == steps:
            break
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(qmodel(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    qmodel.eval()
    return losses


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False), nn.BatchNorm2d(width)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.depthwise(self.expand(x)))
        return self.head(x.mean((2, 3)))


def toy_pixels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n,1,32,32] textured surfaces; label 1 has a bright 8x8 square."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(90, 20, (n, 1, SIZE, SIZE)).clip(0, 255)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        r, c = rng.integers(2, SIZE - 8, 2)
        pixels[i, 0, r : r + 8, c : c + 8] = 230
    return pixels.astype(np.uint8), labels.astype(np.int64)


def toy_batches(n_batches: int, batch: int, seed: int):
    for b in range(n_batches):
        px, y = toy_pixels(batch, seed + b)
        yield to_input(px), torch.from_numpy(y)


@functools.lru_cache(maxsize=None)  # shared with test_openvino; callers must not modify it
def trained_tiny(seed: int = 0, width: int = 8) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for x, y in toy_batches(40, 32, seed=100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():  # settle BatchNorm running statistics on the final weights
        for x, _ in toy_batches(8, 32, seed=200):
            model(x)
    return model.eval()


def calib_batches():
    return [x for x, _ in toy_batches(2, 16, seed=500)]


@pytest.fixture(scope="module")
def float_model():
    return trained_tiny()


@pytest.fixture(scope="module")
def q_openvino(float_model):
    return quantize_int8(float_model, calib_batches(), "openvino", subset_size=32)


@pytest.fixture(scope="module")
def q_tensorrt(float_model):
    return quantize_int8(float_model, calib_batches(), "tensorrt", subset_size=32)


def eval_inputs(n=128):
    px, y = toy_pixels(n, seed=900)
    return to_input(px), y


def _weighted_layers(model) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_float_model_learned_the_toy_task(float_model):
    x, y = eval_inputs()
    with torch.no_grad():
        assert (float_model(x).argmax(1).numpy() == y).mean() >= 0.95


def test_openvino_mode_uses_nncf_cpu_npu_defaults(float_model, q_openvino):
    summary = quantizer_summary(q_openvino)
    weights = [q for q in summary if q.kind == "weight"]
    acts = [q for q in summary if q.kind == "activation"]
    assert len(weights) == _weighted_layers(float_model)
    assert all(q.symmetric and q.signed and q.per_channel and q.num_bits == 8 for q in weights)
    assert all(q.symmetric and q.num_bits == 8 for q in acts)  # preset performance
    # NNCF's default keeps post-ReLU activations unsigned (uint8) on CPU/NPU...
    assert any(not q.signed and (q.level_low, q.level_high) == (0, 255) for q in acts)
    # ...and may quantize a depthwise conv's input per channel.
    assert any(q.per_channel for q in acts)


def test_tensorrt_mode_is_signed_per_tensor_activations_per_channel_weights(float_model, q_tensorrt):
    summary = quantizer_summary(q_tensorrt)
    weights = [q for q in summary if q.kind == "weight"]
    acts = [q for q in summary if q.kind == "activation"]
    assert len(weights) == _weighted_layers(float_model) and acts
    for q in weights:
        assert q.symmetric and q.signed and q.per_channel and q.narrow_range, q
        assert (q.num_bits, q.level_low, q.level_high) == (8, -127, 127), q
    for q in acts:
        assert q.symmetric and q.signed and not q.per_channel, q
        assert (q.num_bits, q.level_low, q.level_high) == (8, -128, 127), q


def test_quantize_leaves_the_float_model_alone_and_is_deterministic(float_model, q_tensorrt):
    before = {k: v.clone() for k, v in float_model.state_dict().items()}
    again = quantize_int8(float_model, calib_batches(), "tensorrt", subset_size=32)
    assert float_model.state_dict().keys() == before.keys()
    assert all(torch.equal(float_model.state_dict()[k], v) for k, v in before.items())
    a, b = q_tensorrt.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fixture", ["q_openvino", "q_tensorrt"])
def test_int8_model_tracks_the_float_model(request, float_model, fixture):
    qmodel = request.getfixturevalue(fixture)
    x, y = eval_inputs()
    with torch.no_grad():
        ref, out = float_model(x), qmodel(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.97
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.equal(out, ref)  # the quantizers are really in the path


def test_qat_finetuning_trains_weights_and_scales(float_model):
    qmodel = quantize_int8(float_model, calib_batches(), "tensorrt", subset_size=16)
    scales_before = {k: v.clone() for k, v in qmodel.state_dict().items() if k.endswith(".scale")}
    assert scales_before
    losses = finetune_steps(qmodel, toy_batches(8, 16, seed=300), steps=8, lr=0.05)
    assert len(losses) == 8 and np.mean(losses[-3:]) <= np.mean(losses[:3])
    after = qmodel.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in scales_before.items())
    assert all(q.signed for q in quantizer_summary(qmodel))  # training keeps the TensorRT format


@pytest.mark.parametrize("mode", ["openvino", "tensorrt"])
def test_checkpoint_round_trip_is_exact(tmp_path, float_model, mode):
    qmodel = quantize_int8(float_model, calib_batches(), mode, subset_size=16)
    finetune_steps(qmodel, toy_batches(3, 16, seed=700), steps=3, lr=0.05)  # state differs from calibration
    meta = {"model": "tiny", "classes": ["ok", "defect"], "threshold": 0.5, "mode": mode}
    path = save_nncf_checkpoint(tmp_path / "int8.pt", qmodel, meta)

    raw = torch.load(path, weights_only=True)  # no pickled objects inside
    assert raw["format"] == "qdeploy-nncf-v1"
    restored, meta2 = load_nncf_checkpoint(path, TinyNet())
    assert meta2 == meta
    assert quantizer_summary(restored) == quantizer_summary(qmodel)
    x, _ = eval_inputs(64)
    with torch.no_grad():
        assert torch.equal(restored(x), qmodel.eval()(x))


def test_checkpoint_errors_are_user_errors(tmp_path, q_openvino):
    path = save_nncf_checkpoint(tmp_path / "int8.pt", q_openvino, {})
    with pytest.raises(UserError, match="does not match the model"):
        load_nncf_checkpoint(path, TinyNet(width=16))
    with pytest.raises(UserError, match="not found"):
        load_nncf_checkpoint(tmp_path / "missing.pt", TinyNet())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_nncf_checkpoint(tmp_path / "junk.pt", TinyNet())
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a qdeploy NNCF checkpoint"):
        load_nncf_checkpoint(tmp_path / "plain.pt", TinyNet())


def test_qdq_onnx_export_runs_in_onnxruntime_like_the_torch_model(tmp_path, q_tensorrt):
    import onnxruntime as ort

    x, _ = eval_inputs(128)
    path = export_qdq_onnx(q_tensorrt, x[:1], tmp_path / "int8.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)  # no NNCF custom ops
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # topological order: Constant nodes, and Identity aliases of constants
        if n.op_type == "Constant":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in constants:
            constants[n.output[0]] = constants[n.input[0]]
    zero_points = [constants[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.numpy()})[0]  # dynamic batch: 128 at once
    with torch.no_grad():
        ref = q_tensorrt(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_bad_calibration_input(float_model):
    px, _ = toy_pixels(4, 0)
    with pytest.raises(TypeError, match="to_input"):
        quantize_int8(float_model, [torch.from_numpy(px)], "openvino")  # uint8 pixels, not model input
    with pytest.raises(UserError, match="no calibration images"):
        quantize_int8(float_model, [], "openvino")
    with pytest.raises(UserError, match="openvino, tensorrt"):
        quantize_int8(float_model, calib_batches(), "tflite")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "effnet_b0"])
def test_registry_models_quantize_in_both_modes(tmp_path, name):
    from quant.models import create_model

    model = create_model(name, 2, (SIZE, SIZE), width=0.5, quantized=False).eval()
    for mode in ("openvino", "tensorrt"):
        qmodel = quantize_int8(model, calib_batches(), mode, subset_size=16)
        summary = quantizer_summary(qmodel)
        weights = {".".join(q.op.split("/")[:-2]) for q in summary if q.kind == "weight"}  # module paths
        layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        # NNCF leaves squeeze-excite convs (on a 1x1 pooled map) in float: its SE ignored pattern.
        assert weights == {n for n in layers if ".se." not in n}
        if mode == "tensorrt":
            assert all(q.signed and not q.per_channel for q in summary if q.kind == "activation")
        path = save_nncf_checkpoint(tmp_path / f"{mode}.pt", qmodel, {})
        restored, _ = load_nncf_checkpoint(path, create_model(name, 2, (SIZE, SIZE), width=0.5, quantized=False))
        x, _ = eval_inputs(16)
        with torch.no_grad():
            assert torch.equal(restored(x), qmodel(x))
