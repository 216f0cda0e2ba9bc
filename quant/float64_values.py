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
import copy
import functools
import hashlib

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


class Table:
    """The float64 values of one exact model and of every model transformations derive from
    it, keyed by their float32 data (shape and bytes): a value follows its tensor through
    renames, copies and fresh wrappers without living in the graph. Only values that differ
    from their float32 data are kept (integer weights and thresholds are their own values);
    a lookup of a shape no kept value has needs no key. A key two different float64 values
    share (also: one tensor's own value, another's differing one) is ambiguous; its tensors
    keep their doc_string."""

    def __init__(self):
        self.values: dict[tuple, np.ndarray] = {}
        self.own: set[tuple] = set()  # digests of float32 data some tensor holds as its own value
        self.ambiguous: set[tuple] = set()
        self.shapes: set[tuple] = set()  # the shapes of the keys in values and ambiguous

    def take(self, proto) -> None:
        """Move the doc_string values of `proto`'s float initializers into the table (one
        without a doc_string holds its own value)."""
        from onnx import TensorProto, numpy_helper

        inits = [i for i in proto.graph.initializer if i.data_type == TensorProto.FLOAT]
        for init in inits:
            data = numpy_helper.to_array(init)
            wide = read(init, data)
            self.record(data, data.astype(np.float64) if wide is None else wide)
        for init in inits:
            if init.doc_string.startswith(TAG) and not self.is_ambiguous(numpy_helper.to_array(init)):
                init.doc_string = ""

    def record(self, data: np.ndarray, wide: np.ndarray) -> bool:
        """Record `wide` as the value of float32 `data`; False when that key is (now) ambiguous."""
        key = _key(data)
        if key in self.ambiguous:
            return False
        if np.array_equal(wide, data.astype(np.float64)):  # its own value
            if key in self.values:
                return self._ambiguous(key)
            self.own.add(_digest(data))
            return True
        known = self.values.get(key)
        if known is None and _digest(data) in self.own:
            return self._ambiguous(key)
        if known is None:
            self.values[key] = wide
            self.shapes.add(data.shape)
            return True
        return True if np.array_equal(known, wide) else self._ambiguous(key)

    def _ambiguous(self, key: tuple) -> bool:
        self.ambiguous.add(key)
        self.shapes.add(key[0])
        return False

    def is_ambiguous(self, data: np.ndarray) -> bool:
        return data.shape in self.shapes and _key(data) in self.ambiguous

    def value(self, data: np.ndarray, init=None) -> np.ndarray:
        """The float64 value of float32 `data` (an ambiguous key: `init`'s doc_string, a
        callable giving the TensorProto)."""
        if data.shape not in self.shapes:
            return data.astype(np.float64)
        key = _key(data)
        if key in self.ambiguous:
            return value(init() if callable(init) else init, data)
        known = self.values.get(key)
        return data.astype(np.float64) if known is None else known.copy()

    def give_back(self, proto) -> None:
        """Write the table's values into `proto`'s initializers as doc_strings."""
        from onnx import TensorProto, numpy_helper

        for init in proto.graph.initializer:
            if init.data_type == TensorProto.FLOAT and tuple(init.dims) in self.shapes \
                    and not init.doc_string.startswith(TAG):
                key = _key(numpy_helper.to_array(init))
                known = None if key in self.ambiguous else self.values.get(key)
                if known is not None:
                    init.doc_string = TAG + base64.b64encode(known.tobytes()).decode("ascii")


def _key(data: np.ndarray) -> tuple:
    return data.shape, data.tobytes()


def _digest(data: np.ndarray) -> tuple:
    return data.shape, hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=16).digest()


def exact(model):
    """`model` (a qonnx ModelWrapper or ModelProto) as a wrapper whose initializers are float64
    to transformations (see module doc): this one model, qonnx's class untouched. Every model a
    transformation returns, including fresh wrappers some build (InferShapes), stays exact.
    The float64 values move out of the graph into a Table for as long as the model is exact
    (doc_strings make a graph about 3.5 times larger, and transformations copy and serialize
    it many times); `plain` and `recorded` write them back."""
    base = _exact_class()
    if isinstance(model, base):
        return model
    proto = copy.deepcopy(getattr(model, "model", model))
    table = Table()
    table.take(proto)
    cls = type("Float64ModelWrapper", (base,), {"table": table})
    return cls(proto)


def recorded(model):
    """`model`'s ModelProto with its float64 values in the doc_strings (a copy for an exact model)."""
    if not isinstance(model, _exact_class()):
        return model.model
    proto = copy.deepcopy(model.model)
    model.table.give_back(proto)
    return proto


def plain(model, values: bool = True):
    """The same graph in qonnx's own ModelWrapper (float32 initializer access), with the
    float64 values back in its doc_strings (values=False: none, the float32 graph alone)."""
    from qonnx.core.modelwrapper import ModelWrapper

    if not values:
        strip(model.model)
    elif isinstance(model, _exact_class()):
        model.table.give_back(model.model)
    return ModelWrapper(model.model, fix_missing_initializer_valueinfo=False) if type(model) is not ModelWrapper else model


@functools.cache
def _exact_class():
    from onnx.numpy_helper import to_array
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import get_by_name

    class Float64ModelWrapper(ModelWrapper):
        table: Table  # set by exact() on the class it makes for one model

        def get_initializer(self, tensor_name, return_dtype=False):
            out = super().get_initializer(tensor_name, return_dtype)
            data = out[0] if return_dtype else out
            if data is None or data.dtype != np.float32:
                return out
            wide = self.table.value(data, lambda: get_by_name(self.graph.initializer, tensor_name))
            return (wide, out[1]) if return_dtype else wide

        def set_initializer(self, tensor_name, tensor_value):
            value = np.asarray(tensor_value)
            if value.dtype not in (np.float32, np.float64):
                return super().set_initializer(tensor_name, tensor_value)
            data, wide = value.astype(np.float32), value.astype(np.float64)  # a float32 value is its own value
            super().set_initializer(tensor_name, data)
            key = _key(data)
            known = self.table.values.get(key)
            if not self.table.record(data, wide):  # ambiguous: the tensors of this key carry their own values
                for init in self.graph.initializer:
                    if known is not None and not init.doc_string.startswith(TAG) and _key(to_array(init)) == key:
                        attach(init, known)
                attach(get_by_name(self.graph.initializer, tensor_name), wide)

        def transform(self, transformation, *args, **kwargs):
            return super().transform(_StaysExact(transformation, type(self)), *args, **kwargs)

    return Float64ModelWrapper


class _StaysExact:
    """A transformation whose result is re-wrapped as exact when it returns a fresh wrapper."""

    def __init__(self, transformation, cls):
        self.transformation, self.cls = transformation, cls

    def apply(self, model):
        out, changed = self.transformation.apply(model)
        if not isinstance(out, self.cls):
            out = self.cls(out.model, fix_missing_initializer_valueinfo=False)
        return out, changed
