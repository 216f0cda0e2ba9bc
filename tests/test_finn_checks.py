"""compilers.finn.checks: models FINN cannot lower are rejected up front, naming node and rule."""
from __future__ import annotations

import numpy as np
import pytest
from test_finn_models import exported

from compilers.finn.checks import check_lowerable, find_problems
from core.errors import UserError


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(path))


@pytest.mark.parametrize("name", ["PlainCNN", "ResidualNet", "MobileNetV1"])
def test_lowerable_models_pass(name):
    path, _ = exported(name)
    assert find_problems(_load(path)) == []
    check_lowerable(_load(path))


@pytest.mark.parametrize(
    "name, rule, node, words",
    [
        ("SiLUNet", "activation", "Sigmoid_0", ["layer 'act'", "SiLU", "ReLU"]),
        ("SENet", "activation", "Sigmoid_0", ["Sigmoid"]),
        ("AdaptivePoolNet", "float-input", "ReduceMean_0", ["layer 'pool'", "TruncAvgPool2d"]),
        ("FloatConvNet", "float-weights", "Conv_1", ["QuantConv2d"]),
        ("MaxPoolForkNet", "maxpool-fork", "MaxPool_0", ["layer 'mp'", "stride-2"]),
        ("SoftmaxNet", "softmax", "Softmax_0", ["logits"]),
        ("PoolAfterMaxPoolNet", "avgpool-after-maxpool", "AveragePool_0", ["layer 'pool'", "QuantReLU"]),
    ],
)
def test_unlowerable_model_names_node_and_rule(name, rule, node, words):
    path, _ = exported(name)
    with pytest.raises(UserError) as e:
        check_lowerable(_load(path), source=path.name)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"node {node}" in msg and f"[{rule}]" in msg and path.name in msg
    for w in words:
        assert w in msg


def test_squeeze_excite_is_named_as_such():
    path, _ = exported("SENet")
    problems = find_problems(_load(path))
    assert any(p.rule == "squeeze-excite" and p.node == "Mul_0" for p in problems)
    # the float pool of the squeeze is reported too, with the layer it came from
    assert any(p.rule == "float-input" and p.layer == "squeeze" for p in problems)


def test_residual_add_with_two_scales_is_rejected():
    """Edit the exported residual net so the operands of one Add have different scales."""
    path, _ = exported("ResidualNet")
    model = _load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    quant = producer[add.input[1]]
    scale = model.get_initializer(quant.input[1])
    model.set_initializer("other_scale", (np.asarray(scale) * 2).astype(np.float32))
    quant.input[1] = "other_scale"
    with pytest.raises(UserError, match=r"\[residual-scale\].*same QuantIdentity"):
        check_lowerable(model)


def test_batched_input_is_rejected():
    from qonnx.transformation.change_batchsize import ChangeBatchSize

    path, _ = exported("PlainCNN")
    model = _load(path).transform(ChangeBatchSize(4))
    with pytest.raises(UserError, match=r"batch-1 NCHW"):
        check_lowerable(model)
