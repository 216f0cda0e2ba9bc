"""compilers.finn.lean_streamline: finn-plus's ResNet streamlining without the cleanups that
cannot change anything gives exactly the graph finn-plus's own step gives (on a residual net and
on a MobileNet-v1 with depthwise convs; on an EfficientNet-Lite with inverted residuals in make
test-slow), in float64 too; and its shape inference without the weights gives qonnx's shapes."""
from __future__ import annotations

import pytest
import torch
from test_finn_models import exported, randomize

from compilers.finn import flow as F
from compilers.finn import steps as S
from quant import float64_values

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _effnet_lite(tmp_path, size=16):
    from quant.export import export_qonnx
    from quant.models import create_model

    torch.manual_seed(0)
    model = randomize(create_model("effnet_lite", 2, (size, size), width=0.25), seed=1)
    return export_qonnx(model, (size, size), tmp_path / "effnet_lite.onnx")


def _tidied(path, out_dir):
    from targets.fpga_parts import get_part

    cfg = S.FlowConfig(out_dir, get_part("zcu104"), 200.0, 1000.0, 0.7, None, "plus", "auto", 1)
    F.clear_outputs(cfg)
    steps = F.STEPS[: [s.__name__ for s in F.STEPS].index("tidy_up") + 1]
    with F.finn_build_dir(cfg.finn_tmp):
        model, _ = F.run_steps(F.tidy_input(F.load_qonnx(path)), cfg, steps=steps, log=lambda m: None)
    return model, cfg


MODELS = ["ResidualNet", "MobileNetV1", pytest.param("effnet_lite", marks=pytest.mark.slow)]


def _model(which, tmp_path):
    return _effnet_lite(tmp_path) if which == "effnet_lite" else exported(which, size=16)[0]


@pytest.mark.parametrize("which", MODELS)
def test_lean_streamlining_gives_finn_plus_graph(which, tmp_path):
    from finn.builder.custom_step_library.resnet import step_resnet_streamline

    from compilers.finn.lean_streamline import resnet_streamline

    path = _model(which, tmp_path)
    model, cfg = _tidied(path, tmp_path / "finn")
    with F.finn_build_dir(cfg.finn_tmp):
        theirs = step_resnet_streamline(float64_values.exact(model), cfg.finn)
        ours = resnet_streamline(float64_values.exact(model))
    assert type(ours) is type(float64_values.exact(ours))  # still exact
    theirs, ours = float64_values.recorded(theirs), float64_values.recorded(ours)
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in theirs.graph.node]
    assert "MultiThreshold" in {n.op_type for n in ours.graph.node}
    assert ours.graph.SerializeToString() == theirs.graph.SerializeToString()  # the same graph, float64 values too


@pytest.mark.parametrize("which", MODELS)
def test_shape_inference_without_weights_gives_qonnx_shapes(which, tmp_path, monkeypatch):
    """Every float initializer handed to ONNX as a typed input (limit 0), on graphs with
    FINN's custom ops (Im2Col, MultiThreshold) and without, gives qonnx's InferShapes graph."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    from compilers.finn import lean_streamline

    monkeypatch.setattr(lean_streamline, "LARGE_INITIALIZER_BYTES", 0)
    path = _model(which, tmp_path)
    tidied, cfg = _tidied(path, tmp_path / "finn")
    with F.finn_build_dir(cfg.finn_tmp):
        streamlined = lean_streamline.resnet_streamline(tidied)
    lowered = tidied.transform(LowerConvsToMatMul())
    for model in (tidied, lowered, streamlined):
        for vi in list(model.graph.value_info)[::2]:  # forget half the shapes: inference must find them
            model.graph.value_info.remove(vi)
        proto = model.model.SerializeToString()
        theirs = ModelWrapper(proto).transform(InferShapes())
        ours = ModelWrapper(proto).transform(lean_streamline.InferShapesWithoutWeights())
        assert len(ours.graph.value_info) > len(model.graph.value_info)
        assert ours.model.SerializeToString() == theirs.model.SerializeToString()


@pytest.mark.parametrize("which", ["ResidualNet", "MobileNetV1"])
def test_indexed_sort_gives_qonnx_sort_order(which, tmp_path):
    """SortGraphIndexed orders the nodes exactly as qonnx's SortGraph, from shuffled node lists
    too, and drops the same floating nodes."""
    import copy
    import random

    from onnx import helper
    from qonnx.transformation.general import SortGraph

    from compilers.finn.lean_streamline import SortGraphIndexed

    model, _ = _tidied(_model(which, tmp_path), tmp_path / "finn")
    rng = random.Random(0)
    for trial in range(4):
        shuffled = copy.deepcopy(model)
        nodes = list(shuffled.graph.node)
        rng.shuffle(nodes)
        if trial == 3:  # a node nothing feeds: both drop it
            nodes.append(helper.make_node("Relu", ["nowhere"], ["floating"], name="Floating"))
        del shuffled.graph.node[:]
        shuffled.graph.node.extend(nodes)
        theirs, ours = copy.deepcopy(shuffled), copy.deepcopy(shuffled)
        SortGraph().apply(theirs)
        SortGraphIndexed().apply(ours)
        assert ours.graph.SerializeToString() == theirs.graph.SerializeToString()
        assert [n.name for n in ours.graph.node] != [n.name for n in nodes] or trial == 0
