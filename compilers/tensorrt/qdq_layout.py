"""Check that a QDQ ONNX model is in the layout TensorRT's explicit INT8 quantization needs.

TensorRT quantizes symmetrically: signed INT8, zero point 0, per-channel weight scales on
the output-channel axis, per-tensor activation scales, and a QuantizeLinear must feed its
DequantizeLinear directly. A graph that breaks one of these either fails to build or
builds with the wrong numbers, so each is a hard rule here:

    int8              every Q/DQ is INT8 (a missing zero point means UINT8 in ONNX)
    zero-point        every zero point is a constant 0
    scale             every scale is a constant, finite and > 0
    weight-per-channel  a DQ of a constant weight of Conv/Gemm/MatMul is per-channel on
                      the output-channel axis (Conv: 0, Gemm transB=1: 0, Gemm transB=0
                      and MatMul: the last axis). Per-tensor is accepted only where
                      per-channel is impossible: a weight with a single output channel.
    activation-per-tensor  a Q/DQ of a computed tensor has one scale
    nothing-between   a QuantizeLinear feeds only DequantizeLinear nodes (no Clip, Cast,
                      Reshape, ... in between), and a DequantizeLinear reads a
                      QuantizeLinear or an INT8 constant

Two things only cost speed, so they are warnings in the report, not errors:
    float-layer       a Conv/Gemm/MatMul whose input or weight is not produced by a DQ
                      (directly or across MaxPool/reshape-like ops, which TensorRT moves
                      a DQ through): TensorRT runs it in FP16/FP32
    residual-add      an Add of two computed tensors that are not both produced by a DQ:
                      TensorRT cannot fuse it into the preceding convolution in INT8
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from core.errors import UserError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# One-input ops that commute with a per-tensor DQ: TensorRT propagates the DQ forward
# across them, so a layer behind one still runs in INT8 (e.g. DQ -> MaxPool -> Conv).
DQ_TRANSPARENT_OPS = ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


class GraphIndex:
    """Read-only lookups over one ONNX graph: producers, consumers, constants, types."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.types: dict[str, int] = {}
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
        for t in graph.initializer:
            self.types[t.name] = t.data_type

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def is_const(self, name: str) -> bool:
        return name in self.inits or (name in self.producer and self.producer[name].op_type == "Constant")

    def dtype(self, name: str) -> int:
        if name in self.types:
            return self.types[name]
        value = self.const(name)
        return 0 if value is None else onnx.helper.np_dtype_to_tensor_dtype(value.dtype)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def load_model(model_or_path) -> tuple[onnx.ModelProto, str]:
    """An ONNX ModelProto and a label for messages, from a model or a path."""
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, model_or_path.graph.name or "model"
    path = Path(model_or_path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX model not found")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as e:  # protobuf raises several types for a non-ONNX file
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


@dataclass
class LayoutReport:
    """What check_trt_layout found in a graph that passed every rule."""

    model: str
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    int8_weights: int = 0  # DQs reading an INT8 constant (pre-quantized weights)
    quantized_layers: list[str] = field(default_factory=list)  # Conv/Gemm/MatMul in INT8
    float_layers: list[str] = field(default_factory=list)  # Conv/Gemm/MatMul left in float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Violation(Exception):
    def __init__(self, node: onnx.NodeProto, rule: str, detail: str):
        super().__init__(f"node '{node.name}' ({node.op_type}) breaks rule '{rule}': {detail}")


def check_trt_layout(model_or_path, label: str | None = None) -> LayoutReport:
    """Check every TensorRT explicit-quantization rule; raise UserError on the first break.

    The message names the node and the rule, and counts any further violations.
    label: what to call the model in messages (default: its path or graph name).
    """
    model, default_label = load_model(model_or_path)
    label = label or default_label
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # types then come from initializers only; the rules still apply
    g = GraphIndex(model)
    report = LayoutReport(model=label)
    violations: list[str] = []
    for node in model.graph.node:
        try:
            if node.op_type in QDQ_OPS:
                _check_qdq(g, node, report)
            elif node.op_type in COMPUTE_OPS:
                _check_compute(g, node, report)
            elif node.op_type == "Add":
                _check_add(g, node, report)
        except _Violation as v:
            violations.append(str(v))
    if violations:
        more = f" (+{len(violations) - 1} more violations)" if len(violations) > 1 else ""
        raise UserError(f"{label}: not TensorRT INT8 layout: {violations[0]}{more}")
    return report


def _check_qdq(g: GraphIndex, node: onnx.NodeProto, report: LayoutReport) -> None:
    is_q = node.op_type == "QuantizeLinear"
    if is_q:
        report.quantize_nodes += 1
    else:
        report.dequantize_nodes += 1
    x = node.input[0]
    int_tensor = node.output[0] if is_q else x
    dtype = g.dtype(int_tensor)
    if len(node.input) < 3 or not node.input[2]:
        dtype = dtype or attr(node, "output_dtype", 0) or TensorProto.UINT8
    elif not dtype:
        dtype = g.dtype(node.input[2])
    if dtype != TensorProto.INT8:
        name = TensorProto.DataType.Name(dtype) if dtype else "unknown"
        raise _Violation(node, "int8", f"quantized type is {name}; TensorRT needs INT8 (export signed, symmetric quantizers)")

    scale = g.const(node.input[1])
    if scale is None:
        raise _Violation(node, "scale", "scale is computed at run time; TensorRT needs a constant scale")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise _Violation(node, "scale", f"scale has a non-positive or non-finite value (min {float(np.min(scale)):g})")
    if len(node.input) >= 3 and node.input[2]:
        zp = g.const(node.input[2])
        if zp is None:
            raise _Violation(node, "zero-point", "zero point is computed at run time; TensorRT needs a constant 0")
        if np.any(zp != 0):
            bad = int(zp.flat[np.flatnonzero(zp)[0]])
            raise _Violation(node, "zero-point", f"zero point {bad} is not 0; TensorRT quantization is symmetric")

    if is_q:
        if node.output[0] in g.graph_outputs:
            raise _Violation(node, "nothing-between", "its quantized output is a graph output, not read by a DequantizeLinear")
        for user in g.consumers.get(node.output[0], []):
            if user.op_type != "DequantizeLinear":
                raise _Violation(user, "nothing-between", f"it sits between QuantizeLinear '{node.name}' and its DequantizeLinear; remove it (finalize_qdq does)")
    else:
        src = g.producer.get(x)
        if g.is_const(x):
            report.int8_weights += 1
        elif src is None:
            raise _Violation(node, "nothing-between", f"it reads graph input '{x}' directly, not a QuantizeLinear")
        elif src.op_type != "QuantizeLinear":
            raise _Violation(src, "nothing-between", f"it sits between a QuantizeLinear and DequantizeLinear '{node.name}'")

    if _on_weight_path(g, node):
        weight_of = None if is_q else _weight_consumer(g, node)
        if weight_of is not None:
            _check_weight_scale(g, node, *weight_of, scale)
    elif scale.size != 1:
        raise _Violation(node, "activation-per-tensor", f"activation scale has {scale.size} values; TensorRT needs one per tensor")


def _on_weight_path(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """A Q of a constant, or a DQ of a constant or of a Q of a constant."""
    x = node.input[0]
    if g.is_const(x):
        return True
    src = g.producer.get(x)
    return node.op_type == "DequantizeLinear" and src is not None and src.op_type == "QuantizeLinear" and g.is_const(src.input[0])


def _weight_consumer(g: GraphIndex, dq: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """(layer, output-channel axis) when this DQ feeds a Conv/Gemm/MatMul weight."""
    rank = len(_weight_value(g, dq).shape)
    for user in g.consumers.get(dq.output[0], []):
        if list(user.input[1:2]) != [dq.output[0]]:
            continue
        if user.op_type == "Conv":
            return user, 0
        if user.op_type == "Gemm":
            return user, 0 if attr(user, "transB", 0) else 1
        if user.op_type == "MatMul":
            return user, rank - 1
    return None


def _weight_value(g: GraphIndex, dq: onnx.NodeProto) -> np.ndarray:
    value = g.const(dq.input[0])
    return value if value is not None else g.const(g.producer[dq.input[0]].input[0])


def _check_weight_scale(g, dq, layer, axis, scale) -> None:
    weight = _weight_value(g, dq)
    channels = weight.shape[axis] if weight.ndim > axis else 1
    if scale.size == 1:
        if channels == 1:
            return  # one output channel: per-tensor is per-channel
        raise _Violation(dq, "weight-per-channel", f"weight of '{layer.name}' has a per-tensor scale; TensorRT needs one scale per output channel (axis {axis})")
    dq_axis = attr(dq, "axis", 1)
    if dq_axis < 0:
        dq_axis += weight.ndim
    if dq_axis != axis or scale.shape != (channels,):
        raise _Violation(dq, "weight-per-channel", f"weight of '{layer.name}' is quantized on axis {dq_axis} with {scale.size} scales; TensorRT needs axis {axis} with {channels}")


def _from_dq(g: GraphIndex, name: str) -> bool:
    """Produced by a DQ, possibly through ops TensorRT moves a DQ across (MaxPool, reshapes)."""
    src = g.producer.get(name)
    while src is not None and src.op_type in DQ_TRANSPARENT_OPS:
        src = g.producer.get(src.input[0])
    return src is not None and src.op_type == "DequantizeLinear"


def _check_compute(g: GraphIndex, node: onnx.NodeProto, report: LayoutReport) -> None:
    data, weight = node.input[0], node.input[1]
    missing = [role for role, name in (("input", data), ("weight", weight)) if not _from_dq(g, name)]
    if missing:
        report.float_layers.append(node.name)
        report.warnings.append(
            f"float-layer: {node.op_type} '{node.name}' has an unquantized {' and '.join(missing)}; TensorRT runs it in FP16/FP32"
        )
    else:
        report.quantized_layers.append(node.name)


def _check_add(g: GraphIndex, node: onnx.NodeProto, report: LayoutReport) -> None:
    inputs = [i for i in node.input if not g.is_const(i)]
    if len(inputs) == 2 and not all(_from_dq(g, i) for i in inputs):
        plain = [i for i in inputs if not _from_dq(g, i)]
        report.warnings.append(
            f"residual-add: Add '{node.name}' input {plain[0]!r} is not quantized; quantize both inputs so TensorRT can fuse the add in INT8"
        )
