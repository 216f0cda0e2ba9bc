"""Float64 initializer values carried in a float32 QONNX file: recorded, read back, ignored
when stale, and used by FINN's own streamlining so an integer threshold lands where exact
arithmetic puts it (float32 arithmetic puts this one a step off)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant import float64_values

# x (integer) -> Mul(a) -> Add(b) -> MultiThreshold(T): output 1 where a*x + b >= T.
# FINN absorbs the Add and the Mul: integer threshold ceil((T - b) / a). With these values
# (T - b) / a is 1e-9 above 7 in float64 (x = 7 is below the threshold), while float32
# arithmetic on the same parameters gives exactly 7.0 (x = 7 would pass).
A, B = 0.1, 0.0
T = 0.7000000001


def _graph(values: dict) -> onnx.ModelProto:
    nodes = [helper.make_node("Mul", ["x", "a"], ["xa"]),
             helper.make_node("Add", ["xa", "b"], ["xab"]),
             helper.make_node("MultiThreshold", ["xab", "t"], ["y"], domain="qonnx.custom_op.general",
                              out_dtype="UINT1")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1]) for n in ("x", "y")]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float64).reshape(shape), name)
             for name, v, shape in (("a", values["a"], ()), ("b", values["b"], ()), ("t", values["t"], (1, 1)))]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("qonnx.custom_op.general", 1)])


def _streamlined_threshold(proto, exact: bool) -> float:
    from compilers.finn.env import ensure_finn

    ensure_finn()
    from finn.transformation.streamline.absorb import AbsorbAddIntoMultiThreshold, AbsorbMulIntoMultiThreshold
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    def run():
        model = float64_values.exact(proto) if exact else ModelWrapper(proto)
        model.set_tensor_datatype("x", DataType["INT8"])
        for t in (AbsorbAddIntoMultiThreshold(), AbsorbMulIntoMultiThreshold()):
            model = model.transform(t)
        assert [n.op_type for n in model.graph.node] == ["MultiThreshold"]
        model = model.transform(RoundAndClipThresholds())
        return float(model.get_initializer(model.graph.node[0].input[1]).item())

    return run()


def _demoted(strip: bool = False) -> onnx.ModelProto:
    proto = _graph({"a": A, "b": B, "t": T})
    float64_values.demote(proto)
    if strip:
        float64_values.strip(proto)
    return proto


def test_demote_keeps_float64_values_and_makes_a_float32_graph():
    proto = _demoted()
    assert all(i.data_type == TensorProto.FLOAT for i in proto.graph.initializer)
    assert float64_values.count(proto) == 3
    t = next(i for i in proto.graph.initializer if i.name == "t")
    data = numpy_helper.to_array(t)
    assert data.dtype == np.float32 and data.item() == np.float32(T)
    assert float64_values.read(t, data).item() == T  # not float32(T)
    onnx.checker.check_model(proto)


def test_a_stale_value_is_ignored():
    proto = _demoted()
    t = next(i for i in proto.graph.initializer if i.name == "t")
    changed = np.full((1, 1), 0.5, dtype=np.float32)
    assert float64_values.read(t, changed) is None  # the data changed: the float64 value no longer applies
    assert float64_values.read(t, numpy_helper.to_array(t)) is not None


def test_streamlining_in_float64_puts_the_threshold_where_exact_arithmetic_does():
    exact_threshold = np.ceil((T - B) / A)
    assert exact_threshold == 8.0 and 7 * A + B < T  # x = 7 is below T in float64

    assert _streamlined_threshold(_demoted(), exact=True) == exact_threshold
    # the same file without its float64 values, or float32 arithmetic: the threshold is 7
    assert _streamlined_threshold(_demoted(strip=True), exact=True) == 7.0
    assert _streamlined_threshold(_demoted(), exact=False) == 7.0


def test_only_the_wrapped_model_is_exact_and_transformations_keep_it_so():
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    get, set_ = ModelWrapper.get_initializer, ModelWrapper.set_initializer
    model = float64_values.exact(_demoted())
    other = ModelWrapper(_demoted())
    assert model.get_initializer("t").dtype == np.float64
    assert other.get_initializer("t").dtype == np.float32  # another model in the same process: qonnx's own
    assert (ModelWrapper.get_initializer, ModelWrapper.set_initializer) == (get, set_)  # no class patch
    model.set_initializer("t", np.array([[1 / 3]]))
    assert model.get_initializer("t").item() == 1 / 3
    shaped = model.transform(InferShapes())  # InferShapes builds a fresh qonnx wrapper inside
    assert shaped.get_initializer("t").item() == 1 / 3
    back = float64_values.plain(shaped)
    assert type(back) is ModelWrapper
    assert back.get_initializer("t").dtype == np.float32  # the graph itself stays float32
    assert back.get_initializer("t").item() == pytest.approx(1 / 3, rel=1e-7)


def test_scalars_keep_their_shape():
    proto = _demoted()
    assert {i.name: list(i.dims) for i in proto.graph.initializer} == {"a": [], "b": [], "t": [1, 1]}


def test_widen_records_float32_values_and_keeps_float64_ones():
    proto = _demoted()
    t = next(i for i in proto.graph.initializer if i.name == "t")
    float64_values.strip(proto)
    float64_values.widen(proto)
    assert float64_values.count(proto) == 3
    assert float64_values.read(t, numpy_helper.to_array(t)).item() == float(np.float32(T))  # float32's own value
    exact = _demoted()
    float64_values.widen(exact)
    t = next(i for i in exact.graph.initializer if i.name == "t")
    assert float64_values.read(t, numpy_helper.to_array(t)).item() == T  # not overwritten


def test_tensors_sharing_float32_data_keep_their_own_float64_values():
    """'t' holds T (float32 data float32(T)), 'u' the same float32 data as its own value: the
    exact wrapper gives each its value, through transformations and back into the file."""
    from qonnx.transformation.infer_shapes import InferShapes

    proto = _demoted()
    t = next(i for i in proto.graph.initializer if i.name == "t")
    u = proto.graph.initializer.add()
    u.CopyFrom(t)
    u.name, u.doc_string = "u", ""
    proto.graph.node.append(helper.make_node("Add", ["y", "u"], ["z"]))
    proto.graph.output[0].name = "z"
    model = float64_values.exact(proto).transform(InferShapes())
    assert model.get_initializer("t").item() == T
    assert model.get_initializer("u").item() == float(np.float32(T))  # its own value, not T
    model.set_initializer("a", np.array(0.2))  # a value the table did not hold
    assert model.get_initializer("a").item() == 0.2
    back = {i.name: i for i in float64_values.recorded(model).graph.initializer}
    assert float64_values.read(back["t"], numpy_helper.to_array(back["t"])).item() == T
    assert float64_values.value(back["u"], numpy_helper.to_array(back["u"])).item() == float(np.float32(T))
    assert float64_values.read(back["a"], numpy_helper.to_array(back["a"])).item() == 0.2
