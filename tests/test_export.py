"""quant.export: QONNX export of the Brevitas models and the graph-vs-model check."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from core.errors import UserError
from quant.export import check_qonnx, export_qonnx
from quant.models import create_model
from quant.preprocess import to_input_np


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_like(name, size, seed=0):
    """A small W4A4 model whose BN and activation scales are not at their initial values."""
    torch.manual_seed(seed)
    model = create_model(name, 2, size, width=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 1, *size, generator=g))
    return model.eval()


def _pixels(n, size, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, *size), dtype=np.uint8)


@pytest.fixture(scope="module")
def resnet8():
    return _trained_like("resnet8", (64, 64))


@pytest.fixture(scope="module")
def resnet8_file(resnet8, tmp_path_factory):
    return export_qonnx(resnet8, (64, 64), tmp_path_factory.mktemp("r8") / "resnet8.onnx")


def _assert_matches(result, model, inputs):
    with torch.no_grad():
        scale = float(model(torch.from_numpy(inputs)).abs().max())
    assert scale > 0  # non-degenerate logits
    assert result["n"] == len(inputs)
    assert result["max_abs_diff"] <= 1e-5 * max(1.0, scale)
    assert result["argmax_agreement"] == 1.0


def test_resnet8_graph_computes_the_model(resnet8, resnet8_file):
    inputs = to_input_np(_pixels(32, (64, 64)))
    _assert_matches(check_qonnx(resnet8_file, resnet8, inputs), resnet8, inputs)
    graph = onnx.load(resnet8_file)
    ops = {n.op_type for n in graph.graph.node}
    assert {"Quant", "Trunc", "AveragePool", "Add"} <= ops and "ReduceMean" not in ops and "MaxPool" not in ops
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 64, 64]
    assert all(vi.type.tensor_type.HasField("shape") for vi in graph.graph.value_info)  # shapes inferred


def test_effnet_lite_graph_computes_the_model(tmp_path):
    size = (32, 48)  # non-square
    model = _trained_like("effnet_lite", size)
    path = export_qonnx(model, size, tmp_path / "effnet_lite.onnx")
    inputs = to_input_np(_pixels(16, size))
    _assert_matches(check_qonnx(path, model, inputs), model, inputs)
    convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
    assert any(a.name == "group" and a.i > 1 for n in convs for a in n.attribute)  # depthwise kept


def test_reexport_is_byte_identical_and_tracks_weights(resnet8, resnet8_file, tmp_path):
    again = export_qonnx(resnet8, (64, 64), tmp_path / "again.onnx")
    assert again.read_bytes() == resnet8_file.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx"]  # no temporary files left
    assert resnet8.training is False
    with torch.no_grad():
        resnet8.fc.weight.mul_(-1)
    try:
        changed = export_qonnx(resnet8, (64, 64), tmp_path / "changed.onnx")
    finally:
        with torch.no_grad():
            resnet8.fc.weight.mul_(-1)
    assert changed.read_bytes() != resnet8_file.read_bytes()


def test_export_restores_training_mode(tmp_path):
    model = create_model("resnet8", 2, (32, 32), width=0.25).train()
    export_qonnx(model, (32, 32), tmp_path / "m.onnx")
    assert model.training


def test_export_rejects_another_input_size(resnet8, tmp_path):
    with pytest.raises(UserError, match=r"in_size \(32, 32\) differs from the \(64, 64\)"):
        export_qonnx(resnet8, (32, 32), tmp_path / "m.onnx")


def test_float_model_cannot_be_exported(tmp_path):
    with pytest.raises(UserError, match="create it with quantized=True"):
        export_qonnx(create_model("effnet_b0", 2, quantized=False), (64, 64), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_check_rejects_inputs_of_another_size(resnet8, resnet8_file):
    with pytest.raises(UserError, match="inputs are 32x32 but .* takes 64x64"):
        check_qonnx(resnet8_file, resnet8, np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(UserError, match=r"float \[N,1,H,W\]"):
        check_qonnx(resnet8_file, resnet8, np.zeros((2, 64, 64), np.float32))


def test_the_export_carries_float64_values_and_runs_as_the_model_in_float64(resnet8, resnet8_file):
    from compilers.finn.execute import Executor
    from qonnx.core.modelwrapper import ModelWrapper
    from quant import float64_values

    graph = onnx.load(resnet8_file)
    floats = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert floats and float64_values.count(graph) == len(floats)  # every float initializer, float32 data

    pixels = _pixels(16, (64, 64))
    x = torch.from_numpy(to_input_np(pixels))
    with torch.no_grad():
        exact = resnet8.double()(x.double()).numpy()
        resnet8.float()
        rounded = resnet8(x).double().numpy()
    ex = Executor(ModelWrapper(str(resnet8_file)))
    assert ex.float64
    got = ex.run({ex.input_names[0]: to_input_np(pixels)})[ex.output_names[0]].reshape(exact.shape)
    assert got.dtype == np.float64
    scale = np.abs(exact).max()
    assert np.abs(got - exact).max() <= 1e-12 * scale  # float64 end to end
    assert np.abs(rounded - exact).max() > 1e-10 * scale  # where float32 is visibly different
