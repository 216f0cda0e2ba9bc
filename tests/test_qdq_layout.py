"""TensorRT QDQ form: finalize_qdq (compilers/tensorrt/qdq_export.py) and the layout rules
(compilers/tensorrt/qdq_layout.py), on a real NNCF export and on hand-made graphs that
break one rule each."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compilers.tensorrt.qdq_export import finalize_qdq
from compilers.tensorrt.qdq_layout import check_trt_layout
from core.errors import UserError
from quant.preprocess import to_input, to_input_np

SIZE = 32


# --- the real path: NNCF (mode="tensorrt") -> export -> finalize -------------------------


def export_nncf_qdq(tmp_dir, size: int = SIZE, seed: int = 0):
    """A ResNet-8 quantized by NNCF for TensorRT, exported and finalized, as the gpu stage does
    (BatchNorm folded into the convolutions first).

    Untrained, but not trivial: BatchNorm statistics come from forward passes over random
    images, the BN gains are random with both signs, and the classifier is scaled so logits
    span a few units.
    Returns (qmodel, raw_onnx, finalized_onnx, FinalizeReport).
    """
    from quant.models import create_model
    from qdeploy.stages.int8 import fold_batchnorm
    from quant.nncf_qat import export_qdq_onnx, quantize_int8

    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=3, in_size=(size, size), quantized=False)
    gen = torch.Generator().manual_seed(seed)
    images = lambda n: to_input(torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8))  # noqa: E731
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
                m.momentum = None  # cumulative average over the passes below
        model.train()
        for _ in range(4):
            model(images(16))
        model.eval()
        model.fc.weight.mul_(10.0)
    qmodel = quantize_int8(fold_batchnorm(model), [images(8)], mode="tensorrt", subset_size=8)
    raw = export_qdq_onnx(qmodel, images(1), tmp_dir / "raw.onnx")
    report = finalize_qdq(raw, tmp_dir / "model.onnx")
    return qmodel, raw, tmp_dir / "model.onnx", report


@pytest.fixture(scope="module")
def nncf_export(tmp_path_factory):
    return export_nncf_qdq(tmp_path_factory.mktemp("nncf"))


def test_finalized_nncf_model_has_tensorrt_layout(nncf_export):
    _, raw, path, report = nncf_export
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    compute = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert report.weights_folded == len(compute) == 10
    # every compute layer reads DQ(int8 constant, per-channel on axis 0) and a DQ'd activation
    layout = check_trt_layout(path)
    assert sorted(layout.quantized_layers) == sorted(compute)
    assert layout.float_layers == [] and layout.warnings == []
    assert layout.int8_weights == 10
    inits = {t.name: t for t in model.graph.initializer}
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits):
        w, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert w.data_type == TensorProto.INT8
        assert scale.shape == (w.dims[0],) and np.all(scale > 0)
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 0
    # only activations are quantized at run time
    assert all(n.input[0] not in inits for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert report.parity_inputs == 32 and report.argmax_agreement == 1.0


def test_finalized_model_on_onnxruntime_matches_nncf_torch(nncf_export):
    """onnxruntime running the Q/DQ graph as ONNX defines it (exact_qdq: no int8 kernel
    fusion, whose u8 x s8 pairs saturate on CPUs without VNNI) is an exact INT8 execution:
    within one quantization step at every input of the head (core.compare.one_step_bound)."""
    from core.compare import one_step_bound
    from quant.nncf_qat import head_input_step
    from targets.runners import OrtRunner

    qmodel, _, path, _ = nncf_export
    pixels = np.random.default_rng(7).integers(0, 256, size=(128, 1, SIZE, SIZE), dtype=np.uint8)
    with torch.no_grad():
        expected = qmodel(torch.from_numpy(to_input_np(pixels))).numpy()
    runner = OrtRunner(path, threads=1, exact_qdq=True)
    got = runner.predict(pixels, batch_size=16)
    one = runner.predict(pixels[:1], batch_size=1)  # dynamic batch: 1 works too
    assert got.shape == expected.shape == (128, 3)
    step, weight = head_input_step(qmodel, torch.from_numpy(to_input_np(pixels[:1])))
    bound = one_step_bound(step, weight.numpy())
    assert bound < 0.1 * float(np.abs(expected).max())  # tight enough to mean something
    assert float(np.abs(got - expected).max()) <= bound
    assert (got.argmax(1) == expected.argmax(1)).mean() == 1.0
    assert float(np.abs(one - got[:1]).max()) <= bound  # another batch size: another summation order


# --- hand-made graphs -------------------------------------------------------------------

C = 4  # channels of the hand-made model


def _qdq(prefix, x, scale_name, zp_name):
    return [
        helper.make_node("QuantizeLinear", [x, scale_name, zp_name], [f"{prefix}_q"], name=f"{prefix}_Q"),
        helper.make_node("DequantizeLinear", [f"{prefix}_q", scale_name, zp_name], [f"{prefix}_dq"], name=f"{prefix}_DQ"),
    ]


def _weight_dq(name, w_int8, scale):
    inits = [
        numpy_helper.from_array(w_int8, f"{name}_w"),
        numpy_helper.from_array(scale.astype(np.float32), f"{name}_ws"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_wzp"),
    ]
    node = helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wzp"], [f"{name}_wdq"], name=f"{name}_wDQ", axis=0)
    return node, inits


def valid_model(seed: int = 0) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv1 -> Relu -> Q/DQ -> Conv2 -> Q/DQ -> Add(residual) -> pool -> Q/DQ -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [
        numpy_helper.from_array(np.array(1 / 127, np.float32), "s_in"),
        numpy_helper.from_array(np.array(0.02, np.float32), "s_act"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
    ]
    for name, shape in (("conv1", (C, 1, 3, 3)), ("conv2", (C, C, 3, 3)), ("fc", (3, C))):
        node, extra = _weight_dq(name, rng.integers(-127, 128, size=shape).astype(np.int8), rng.uniform(0.002, 0.01, size=shape[0]))
        nodes.append(node)
        inits += extra
    nodes += _qdq("in", "input", "s_in", "zp")
    nodes.append(helper.make_node("Conv", ["in_dq", "conv1_wdq"], ["c1"], name="Conv1", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="Relu1"))
    nodes += _qdq("r1", "r1", "s_act", "zp")
    nodes.append(helper.make_node("Conv", ["r1_dq", "conv2_wdq"], ["c2"], name="Conv2", pads=[1, 1, 1, 1]))
    nodes += _qdq("c2", "c2", "s_act", "zp")
    nodes.append(helper.make_node("Add", ["c2_dq", "r1_dq"], ["sum"], name="ResidualAdd"))
    nodes.append(helper.make_node("GlobalAveragePool", ["sum"], ["gap"], name="Pool"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="Flatten"))
    nodes += _qdq("flat", "flat", "s_act", "zp")
    nodes.append(helper.make_node("Gemm", ["flat_dq", "fc_wdq"], ["logits"], name="FC", transB=1))
    graph = helper.make_graph(
        nodes,
        "hand_made",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_init(model, name, value):
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _pixels(n=16, seed=0):
    return to_input_np(np.random.default_rng(seed).integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8))


def _violation(model, node: str, rule: str) -> str:
    with pytest.raises(UserError) as e:
        check_trt_layout(model)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"node '{node}'" in msg and f"rule '{rule}'" in msg, msg
    return msg


def test_valid_hand_made_graph_passes():
    report = check_trt_layout(valid_model())
    assert report.quantized_layers == ["Conv1", "Conv2", "FC"]
    assert (report.quantize_nodes, report.dequantize_nodes, report.int8_weights) == (4, 7, 3)
    assert report.float_layers == [] and report.warnings == []


def test_uint8_activation_fails_int8_rule():
    model = valid_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), "zp_u8"))
    for name in ("r1_Q", "r1_DQ"):
        _node(model, name).input[2] = "zp_u8"
    msg = _violation(model, "r1_Q", "int8")
    assert "UINT8" in msg and "+1 more" in msg  # the DQ breaks it too


def test_missing_zero_point_means_uint8():
    model = valid_model()
    for name in ("in_Q", "in_DQ"):
        del _node(model, name).input[2]
    assert "UINT8" in _violation(model, "in_Q", "int8")


def test_nonzero_zero_point_fails():
    model = valid_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int8), "zp3"))
    _node(model, "c2_Q").input[2] = _node(model, "c2_DQ").input[2] = "zp3"
    assert "zero point 3" in _violation(model, "c2_Q", "zero-point")


def test_non_positive_scale_fails():
    model = valid_model()
    _set_init(model, "conv2_ws", np.array([0.01, -0.01, 0.01, 0.01], np.float32))
    _violation(model, "conv2_wDQ", "scale")


def test_per_tensor_weight_fails_where_per_channel_is_possible():
    model = valid_model()
    _set_init(model, "conv2_ws", np.array(0.01, np.float32))
    _set_init(model, "conv2_wzp", np.array(0, np.int8))
    assert "per-tensor" in _violation(model, "conv2_wDQ", "weight-per-channel")


def test_per_tensor_weight_allowed_for_a_single_output_channel():
    model = valid_model()
    # FC with one output: per-tensor and per-channel are the same thing
    _set_init(model, "fc_w", np.ones((1, C), np.int8))
    _set_init(model, "fc_ws", np.array(0.01, np.float32))
    _set_init(model, "fc_wzp", np.array(0, np.int8))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    assert check_trt_layout(model).quantized_layers == ["Conv1", "Conv2", "FC"]


def test_weight_quantized_on_the_wrong_axis_fails():
    model = valid_model()
    _set_init(model, "conv2_ws", np.full(C, 0.01, np.float32))
    next(a for a in _node(model, "conv2_wDQ").attribute if a.name == "axis").i = 1  # input channels
    assert "axis 1" in _violation(model, "conv2_wDQ", "weight-per-channel")


def test_gemm_without_transpose_wants_the_last_axis():
    model = valid_model()
    fc = _node(model, "FC")
    fc.attribute[0].i = 0  # transB = 0: weight [in, out], output channels on axis 1
    _set_init(model, "fc_w", np.ones((C, 3), np.int8))
    assert "needs axis 1" in _violation(model, "fc_wDQ", "weight-per-channel")


def test_per_channel_activation_fails():
    model = valid_model()
    model.graph.initializer.append(numpy_helper.from_array(np.full(C, 0.02, np.float32), "s_pc"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(C, np.int8), "zp_pc"))
    for name in ("c2_Q", "c2_DQ"):
        _node(model, name).input[1:3] = ["s_pc", "zp_pc"]
    assert "4 values" in _violation(model, "c2_Q", "activation-per-tensor")


def test_clip_between_q_and_dq_fails_naming_the_clip():
    model = valid_model()
    model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int8), n) for n, v in (("lo", -127), ("hi", 127))])
    model.graph.node.append(helper.make_node("Clip", ["c2_q", "lo", "hi"], ["c2_clipped"], name="NarrowClip"))
    _node(model, "c2_DQ").input[0] = "c2_clipped"
    msg = _violation(model, "NarrowClip", "nothing-between")
    assert "c2_Q" in msg


def test_unquantized_conv_is_a_warning_not_an_error():
    model = valid_model()
    _node(model, "Conv2").input[0] = "r1"  # reads the float ReLU output
    report = check_trt_layout(model)
    assert report.float_layers == ["Conv2"]
    assert any(w.startswith("float-layer: Conv 'Conv2' has an unquantized input") for w in report.warnings)


def test_dq_through_maxpool_still_counts_as_quantized():
    model = valid_model()
    model.graph.node.append(helper.make_node("MaxPool", ["r1_dq"], ["r1_pool"], name="Pool2", kernel_shape=[1, 1]))
    _node(model, "Conv2").input[0] = "r1_pool"
    assert check_trt_layout(model).float_layers == []


def test_residual_add_with_one_float_input_is_a_warning():
    model = valid_model()
    _node(model, "ResidualAdd").input[1] = "r1"
    report = check_trt_layout(model)
    assert report.warnings == ["residual-add: Add 'ResidualAdd' input 'r1' is not quantized; quantize both inputs so TensorRT can fuse the add in INT8"]


def test_layout_checker_user_errors_for_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        check_trt_layout(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        check_trt_layout(tmp_path / "junk.onnx")


# --- finalize_qdq on hand-made graphs ---------------------------------------------------


def test_weight_quantize_of_float_constant_becomes_int8_initializer(tmp_path):
    model = valid_model()
    # as torch exports it: float weight -> QuantizeLinear(axis 0) -> DequantizeLinear
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv2_w"))
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv2_ws"))
    w_float = (w.astype(np.float32) + np.random.default_rng(1).uniform(-0.4, 0.4, w.shape)) * scale.reshape(-1, 1, 1, 1)
    model.graph.initializer.append(numpy_helper.from_array(w_float.astype(np.float32), "conv2_wf"))
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["conv2_wf", "conv2_ws", "conv2_wzp"], ["conv2_wq"], name="conv2_wQ", axis=0))
    _node(model, "conv2_wDQ").input[0] = "conv2_wq"
    assert check_trt_layout(model).int8_weights == 2  # valid layout already, but quantized at build time
    onnx.save(model, str(tmp_path / "in.onnx"))
    report = finalize_qdq(tmp_path / "in.onnx", tmp_path / "out.onnx")
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert report.weights_folded == 1 and "conv2_wQ" not in {n.name for n in out.graph.node}
    folded = {t.name: t for t in out.graph.initializer}[_node(out, "conv2_wDQ").input[0]]
    assert folded.data_type == TensorProto.INT8
    np.testing.assert_array_equal(numpy_helper.to_array(folded), w)  # the rounding ONNX's Q does
    assert report.max_abs_diff == 0.0


def test_batch_dimension_fixed_or_dynamic(tmp_path):
    onnx.save(valid_model(), str(tmp_path / "in.onnx"))
    finalize_qdq(tmp_path / "in.onnx", tmp_path / "fixed.onnx", batch=4, check_inputs=_pixels(8))
    fixed = onnx.load(str(tmp_path / "fixed.onnx"))
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 4
    report = finalize_qdq(tmp_path / "in.onnx", tmp_path / "dyn.onnx")
    assert report.batch == "dynamic"
    sess = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5, 16):
        assert sess.run(None, {"input": _pixels(n)})[0].shape == (n, 3)


def test_finalize_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        finalize_qdq(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    old = valid_model()
    old.opset_import[0].version = 12
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(UserError, match="opset 12 .* opset_version >= 13"):
        finalize_qdq(tmp_path / "old.onnx", tmp_path / "out.onnx")
    model = valid_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), "zp_u8"))
    for name in ("r1_Q", "r1_DQ"):
        _node(model, name).input[2] = "zp_u8"
    onnx.save(model, str(tmp_path / "u8.onnx"))
    with pytest.raises(UserError, match="node 'r1_Q' .* rule 'int8'"):
        finalize_qdq(tmp_path / "u8.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_fixed_batch_export_that_breaks_with_a_dynamic_batch_is_a_user_error(tmp_path):
    model = valid_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    # as an exporter with a traced batch leaves it: Reshape to (2, C) instead of Flatten
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, C], np.int64), "shape_2c"))
    flatten = _node(model, "Flatten")
    flatten.op_type, flatten.input[:] = "Reshape", ["gap", "shape_2c"]
    onnx.save(model, str(tmp_path / "traced.onnx"))
    with pytest.raises(UserError, match="dynamic batch; export with a dynamic batch axis, or pass batch=N"):
        finalize_qdq(tmp_path / "traced.onnx", tmp_path / "out.onnx")
    report = finalize_qdq(tmp_path / "traced.onnx", tmp_path / "out.onnx", batch=2)
    assert report.batch == 2 and report.max_abs_diff == 0.0


def test_duplicate_node_names_are_made_unique(tmp_path):
    model = valid_model()
    _node(model, "Relu1").name = "Conv1"  # two nodes called Conv1
    onnx.save(model, str(tmp_path / "dup.onnx"))
    finalize_qdq(tmp_path / "dup.onnx", tmp_path / "out.onnx")
    names = [n.name for n in onnx.load(str(tmp_path / "out.onnx")).graph.node]
    assert len(names) == len(set(names)) and "Conv1_" in names
