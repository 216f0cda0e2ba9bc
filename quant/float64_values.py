"""Exact (float64) values of a QONNX graph's float32 initializers, carried in the file.

Why: the FPGA computes integer accumulators exactly and compares them with integer
thresholds. FINN derives those thresholds from the graph's scales, BatchNorm parameters and
quantizer settings with numpy arithmetic on float32 initializers; a threshold that lands
within a few float32 ulps of an integer is rounded the wrong way, and the design then
differs from the trained model on activations that sit on a rounding boundary (18 of 360
NEU test images did). Deriving the thresholds in float64 from float64 values removes that: a
boundary would have to lie within float64 rounding (about 1e-12 at these magnitudes) of an
integer.

How: the export traces the Brevitas model in float64 and writes an ordinary float32 QONNX
file (what every ONNX/QONNX tool reads); each float initializer's `doc_string` holds its
float64 value (`TAG` + base64). `exact(model)` wraps one
model so that its get_initializer returns the float64 value (or the float32 value widened) and
set_initializer keeps a float64 result as float32 data plus its float64 doc_string, so graph
transformations (FINN's streamlining) compute in float64 while the graph stays float32;
`plain(model)` hands the same graph back to qonnx's own wrapper.
A stale doc_string (its float64 value no longer rounds to the data) is ignored.
"""
from __future__ import annotations

import base64
import functools

import numpy as np

TAG = "qdeploy.float64:"


def attach(init, value: np.ndarray) -> None:
    """Write float64 `value` into TensorProto `init` as float32 data plus its doc_string."""
    from onnx import numpy_helper

    value = np.array(value, dtype=np.float64, order="C")  # (ascontiguousarray would make a scalar 1-d)
    init.CopyFrom(_with_name(numpy_helper.from_array(value.astype(np.float32)), init.name))
    init.doc_string = TAG + base64.b64encode(value.tobytes()).decode("ascii")


def _with_name(proto, name: str):
    proto.name = name
    return proto


def read(init, data: np.ndarray) -> np.ndarray | None:
    """The float64 value recorded in `init` when it still rounds to its float32 `data`, else None."""
    if not init.doc_string.startswith(TAG):
        return None
    value = np.frombuffer(base64.b64decode(init.doc_string[len(TAG):]), dtype=np.float64)
    if value.size != data.size:
        return None
    value = value.reshape(data.shape)
    return value.copy() if np.array_equal(value.astype(np.float32), data) else None


def value(init, data: np.ndarray) -> np.ndarray:
    """An initializer's value for float64 arithmetic: its recorded float64 value, a float32
    `data` widened when none is recorded, any other dtype as it is."""
    if data.dtype != np.float32:
        return data
    exact = read(init, data)
    return data.astype(np.float64) if exact is None else exact


def demote(proto) -> None:
    """Make a float64 ONNX graph float32 in place, keeping every float64 initializer's value."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for init in g.initializer:
        if init.data_type == TensorProto.DOUBLE:
            attach(init, numpy_helper.to_array(init))
    for node in g.node:  # Constant nodes and Cast targets
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.DOUBLE:
                attr.i = TensorProto.FLOAT
            if attr.type == attr.TENSOR and attr.t.data_type == TensorProto.DOUBLE:
                attr.t.CopyFrom(_with_name(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)),
                                           attr.t.name))


def widen(proto) -> None:
    """Record the float32 value itself as the float64 value of every float initializer without one."""
    from onnx import TensorProto, numpy_helper

    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT and not init.doc_string.startswith(TAG):
            attach(init, numpy_helper.to_array(init))


def strip(proto) -> None:
    """Remove the recorded float64 values (once no transformation needs them)."""
    for init in proto.graph.initializer:
        if init.doc_string.startswith(TAG):
            init.doc_string = ""


def count(proto) -> int:
    """How many initializers carry a float64 value."""
    return sum(init.doc_string.startswith(TAG) for init in proto.graph.initializer)


def exact(model):
    """`model` (a qonnx ModelWrapper or ModelProto) as a wrapper whose initializers are float64
    to transformations (see module doc): this one model, qonnx's class untouched. Every model a
    transformation returns, including fresh wrappers some build (InferShapes), stays exact."""
    cls = _exact_class()
    return model if isinstance(model, cls) else cls(getattr(model, "model", model))


def plain(model):
    """The same graph in qonnx's own ModelWrapper (float32 initializer access)."""
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(model.model) if type(model) is not ModelWrapper else model


@functools.cache
def _exact_class():
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import get_by_name

    class Float64ModelWrapper(ModelWrapper):
        def get_initializer(self, tensor_name, return_dtype=False):
            out = super().get_initializer(tensor_name, return_dtype)
            data = out[0] if return_dtype else out
            if data is None:
                return out
            wide = value(get_by_name(self.graph.initializer, tensor_name), data)
            return (wide, out[1]) if return_dtype else wide

        def set_initializer(self, tensor_name, tensor_value):
            wide = np.asarray(tensor_value)
            if wide.dtype != np.float64:
                return super().set_initializer(tensor_name, tensor_value)
            super().set_initializer(tensor_name, wide.astype(np.float32))
            attach(get_by_name(self.graph.initializer, tensor_name), wide)

        def transform(self, transformation, *args, **kwargs):
            return super().transform(_StaysExact(transformation, Float64ModelWrapper), *args, **kwargs)

    return Float64ModelWrapper


class _StaysExact:
    """A transformation whose result is re-wrapped as exact when it returns a fresh wrapper."""

    def __init__(self, transformation, cls):
        self.transformation, self.cls = transformation, cls

    def apply(self, model):
        out, changed = self.transformation.apply(model)
        return (out if isinstance(out, self.cls) else self.cls(out.model)), changed
