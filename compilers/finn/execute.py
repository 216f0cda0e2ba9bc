"""Batched python-mode execution of FINN graphs, node for node FINN's own semantics.

FINN's `execute_onnx` runs one sample at a time and builds a fresh onnxruntime
session for every standard ONNX node on every call, which makes a whole-test-set
check of every build stage take many minutes. This executor walks the same graph in
the same order with the same per-node implementations, but on a batch:

- standard ONNX nodes run in onnxruntime on the whole batch, with the session built
  once per node (batch dimension symbolic; a Reshape target that hard-codes batch 1
  is widened to the batch);
- FINN/qonnx custom nodes whose python execution handles a leading batch dimension
  (listed in BATCH_SAFE) run once on the whole batch;
- a few ops that hard-code batch 1 (Im2Col, ConvolutionInputGenerator, MVAU, VVAU,
  DuplicateStreams) run batched re-implementations of their execute_node (kernels.py);
- every other custom node runs its own `execute_node` once per sample;
- a node that reads no batched tensor (a quantizer of weights, e.g. BipolarQuant of
  1-bit weights, and what follows it) runs once: its output has no batch dimension;
- specialized `*_hls` / `*_rtl` nodes have no python execution: they run as their
  generic op type (`to_generic`), which is what FINN's python simulation means;
- a StreamingDataflowPartition node runs its partition model recursively.

A graph whose initializers carry float64 values (the export and the float stages of the
flow up to integer thresholds, quant/float64_values.py) runs in float64 on those values:
it computes what the model computes exactly, as FINN's integer thresholds do. onnxruntime
has no float64 Conv or AveragePool; torch runs those two (FLOAT64_OPS).

parity.check_executor compares it with FINN's `execute_onnx` on a few samples of
every stage; where they disagree the stage runs with `reference_mode=True` (every
custom node through FINN's own code, one sample at a time).
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx import numpy_helper as nph

from compilers.finn.env import ensure_finn
from compilers.finn.kernels import KERNELS
from quant import float64_values

# Custom ops whose python execute_node is batch-agnostic (numpy broadcasting / elementwise).
BATCH_SAFE = frozenset(
    {
        "MultiThreshold",
        "Thresholding",
        "Quant",
        "FMPadding",
        "Pool",
        "ElementwiseAdd",
        "ElementwiseSub",
        "ElementwiseMul",
        "ElementwiseDiv",
        "ElementwiseMaximum",
        "ElementwiseMinimum",
        "QuantAvgPool2dRect",  # compilers/finn/custom_ops.py
    }
)
_GENERIC_DOMAIN = "finn.custom_op.fpgadataflow"
_SPECIALIZED = (("_hls", _GENERIC_DOMAIN + ".hls"), ("_rtl", _GENERIC_DOMAIN + ".rtl"))


def to_generic(model):
    """Copy of `model` with specialized *_hls/*_rtl nodes mapped back to their generic op.

    HLS/RTL variants carry the generic op's attributes plus implementation details,
    and only the generic op has a python execution.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    out = ModelWrapper(copy.deepcopy(model.model))
    for node in out.graph.node:
        for suffix, domain in _SPECIALIZED:
            if node.domain == domain and node.op_type.endswith(suffix):
                node.op_type = node.op_type[: -len(suffix)]
                node.domain = _GENERIC_DOMAIN
    return out


def _sanitize_enabled() -> bool:
    from qonnx.util.basic import get_sanitize_quant_tensors

    return get_sanitize_quant_tensors() != 0


class Executor:
    """Runs one FINN/QONNX graph (and its dataflow partitions) on batches.

    `partition` replaces the model referenced by the (single) StreamingDataflowPartition
    node: parity of a post-partition stage runs the parent graph around that stage's
    partition model.
    """

    def __init__(self, model, partition=None, reference_mode: bool = False):
        ensure_finn()
        self.reference_mode = reference_mode  # True: every custom node runs FINN's code per sample
        self.model = to_generic(model)
        self.graph = self.model.graph
        self._partition_override = partition
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._custom: dict[int, object] = {}
        self._children: dict[int, Executor] = {}
        self._opsets = self.model.get_opset_imports()
        self.float64 = float64_values.count(self.model.model) > 0
        self._constants = {t.name: self._constant(t) for t in self.graph.initializer}
        self._shapes, self._elem = {}, {}
        for vi in list(self.graph.input) + list(self.graph.output) + list(self.graph.value_info):
            self._shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            self._elem[vi.name] = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
        self._sanitize = _sanitize_enabled()
        self._dtypes = {name: self.model.get_tensor_datatype(name) for name in self._shapes}

    def _constant(self, init) -> np.ndarray:
        data = nph.to_array(init)
        return float64_values.value(init, data) if self.float64 else data

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.graph.input if i.name not in self._constants]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    def run(self, inputs: dict[str, np.ndarray], full: bool = False) -> dict[str, np.ndarray]:
        """Execute on a batch: every input carries a leading batch dimension N.

        Returns the graph outputs, or with `full` every tensor computed (partition
        tensors included under their own names).
        """
        n = next(iter(inputs.values())).shape[0]
        ctx: dict[str, np.ndarray] = dict(self._constants)
        ctx.update({k: np.asarray(v, dtype=self._float) for k, v in inputs.items()})
        batched = set(inputs)
        extra: dict[str, np.ndarray] = {}
        clean: set[str] = set()  # tensors sanitized as a node output: unchanged as an input
        for idx, node in enumerate(self.graph.node):
            if self._sanitize:
                self._sanitize_tensors([i for i in node.input if i not in clean], ctx)
            if node.op_type == "StreamingDataflowPartition":
                self._run_partition(idx, node, ctx, full, extra)
            elif node.domain in ("", "ai.onnx"):
                self._run_standard(idx, node, ctx, n if _reads_batch(node, batched) else 1)
            else:
                self._run_custom(idx, node, ctx, batched, n)
            if _reads_batch(node, batched):  # a node of constants only (quantized weights) is not per sample
                batched.update(o for o in node.output if o)
            if self._sanitize:
                self._sanitize_tensors(node.output, ctx)
                clean.update(node.output)
        if full:
            for k, v in extra.items():
                ctx.setdefault(k, v)
            return ctx
        return {o: ctx[o] for o in self.output_names}

    # -- node kinds --------------------------------------------------------------------

    def _run_partition(self, idx, node, ctx, full, extra):
        child = self._children.get(idx)
        if child is None:
            from qonnx.core.modelwrapper import ModelWrapper
            from qonnx.custom_op.registry import getCustomOp

            sub = self._partition_override
            if sub is None:
                sub = ModelWrapper(getCustomOp(node).get_nodeattr("model"))
            child = self._children[idx] = Executor(sub, reference_mode=self.reference_mode)
        feed = {child.input_names[i]: ctx[name] for i, name in enumerate(node.input)}
        res = child.run(feed, full=full)
        for i, name in enumerate(node.output):
            ctx[name] = res[child.output_names[i]]
        if full:
            for k, v in res.items():
                if k not in child._constants:
                    extra[k] = v

    @property
    def _float(self):
        return np.float64 if self.float64 else np.float32

    def _run_standard(self, idx, node, ctx, n):
        if self.float64 and node.op_type in FLOAT64_OPS:
            ctx[node.output[0]] = FLOAT64_OPS[node.op_type](node, *(ctx[i] for i in node.input if i))
            return
        sess = self._sessions.get(idx)
        if sess is None:
            sess = self._sessions[idx] = self._make_session(node, ctx)
        feed = {}
        for name in node.input:
            if not name:
                continue
            value = ctx[name]
            if node.op_type == "Reshape" and name == node.input[1]:
                value = _widen_reshape_target(value, n)
            feed[name] = value
        outs = sess.run(None, feed)
        for name, value in zip([o for o in node.output if o], outs):
            ctx[name] = value

    def _make_session(self, node, ctx):
        inputs, seen = [], set()
        for name in node.input:
            if not name or name in seen:
                continue
            seen.add(name)
            value = ctx[name]
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            shape = list(value.shape)
            if name not in self._constants and shape:
                shape[0] = "N"
            inputs.append(helper.make_tensor_value_info(name, elem, shape))
        outputs = [helper.make_tensor_value_info(o, self._out_elem(o), None) for o in node.output if o]
        graph = helper.make_graph([node], "single_node", inputs, outputs)
        opset = self._opsets.get(node.domain, self._opsets.get("", 13))
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        proto.ir_version = min(proto.ir_version, 10)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def _out_elem(self, name):
        elem = self._elem.get(name, onnx.TensorProto.FLOAT)
        return onnx.TensorProto.DOUBLE if self.float64 and elem == onnx.TensorProto.FLOAT else elem

    def _run_custom(self, idx, node, ctx, batched, n):
        inst = self._custom.get(idx)
        if inst is None:
            from qonnx.custom_op.registry import getCustomOp

            inst = self._custom[idx] = getCustomOp(node)
        outs = [o for o in node.output if o]
        if not self.float64 or node.op_type in FLOAT64_CUSTOM:
            return self._run_custom_as_is(inst, node, ctx, batched, n, outs, self._float)
        if node.op_type == "Quant":  # qonnx's execute_node casts to float32
            ctx[outs[0]] = _int_quant(inst, *(ctx[i] for i in node.input))
            return
        # float32 inside: give it float32 operands, widen what it returns
        view = dict(ctx)
        view.update({i: np.asarray(ctx[i], dtype=np.float32) for i in node.input if i})
        self._run_custom_as_is(inst, node, view, batched, n, outs, np.float32)
        ctx.update({o: np.asarray(view[o], dtype=np.float64) for o in outs})

    def _run_custom_as_is(self, inst, node, ctx, batched, n, outs, dtype):
        if not _reads_batch(node, batched):  # e.g. BipolarQuant of weights: once, whatever the batch
            for o in outs:
                ctx[o] = np.zeros(self._shapes[o], dtype=dtype)
            inst.execute_node(ctx, self.graph)
            return
        kernel = None if self.reference_mode else KERNELS.get(node.op_type)
        if kernel is not None and kernel(inst, node, ctx, self.graph):
            return
        if node.op_type in BATCH_SAFE and not self.reference_mode:
            for o in outs:
                ctx[o] = np.zeros([n] + self._shapes[o][1:], dtype=dtype)
            inst.execute_node(ctx, self.graph)
            return
        results = {o: [] for o in outs}
        for i in range(n):
            local = {}
            for name in node.input:
                if name:
                    local[name] = ctx[name][i : i + 1] if name in batched else ctx[name]
            for o in outs:
                local[o] = np.zeros(self._shapes[o], dtype=dtype)
            local[""] = None
            inst.execute_node(local, self.graph)
            for o in outs:
                results[o].append(local[o])
        for o in outs:
            ctx[o] = np.concatenate(results[o], axis=0)

    def _sanitize_tensors(self, names, ctx):
        """qonnx's sanitize_quant_values, vectorised (its max() is a python loop).

        Tensors annotated with an integer datatype whose values are not allowed are
        rounded; a rounding error above qonnx's threshold is an error, as in qonnx.
        """
        from qonnx.util.basic import get_execution_error_thresh

        for name in names:
            if not name or name in self._constants or name not in ctx:
                continue
            dtype = self._dtypes.get(name)
            if dtype is None or not dtype.is_integer():
                continue
            values = ctx[name]
            if np.all(dtype.allowed(values)):
                continue
            rounded = np.round(values)
            err = float(np.max(np.abs(values - rounded))) if values.size else 0.0
            if err > get_execution_error_thresh():
                raise ValueError(f"tensor {name}: rounding error {err:g} too high for its datatype {dtype.name}")
            ctx[name] = rounded


def _reads_batch(node, batched: set) -> bool:
    """True when one of the node's inputs carries the batch (is computed from a graph input)."""
    return node.op_type == "StreamingDataflowPartition" or any(i in batched for i in node.input if i)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(node, x, w, b=None):
    """ONNX Conv (2D, NOTSET padding) in float64 with torch."""
    import torch
    import torch.nn.functional as F

    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or x.ndim != 4:
        raise NotImplementedError(f"float64 Conv {node.name}: only 2D convolutions with explicit pads")
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    xt = F.pad(torch.from_numpy(np.ascontiguousarray(x)), (left, right, top, bottom))
    y = F.conv2d(xt, torch.from_numpy(np.ascontiguousarray(w)), None if b is None else torch.from_numpy(b),
                 stride=tuple(a.get("strides", [1, 1])), dilation=tuple(a.get("dilations", [1, 1])),
                 groups=a.get("group", 1))
    return y.numpy()


def _average_pool(node, x):
    """ONNX AveragePool (2D, no padding) in float64 with torch."""
    import torch
    import torch.nn.functional as F

    a = _attrs(node)
    if any(a.get("pads", [0])) or a.get("ceil_mode", 0) or x.ndim != 4:
        raise NotImplementedError(f"float64 AveragePool {node.name}: only 2D pooling without padding")
    k = tuple(a["kernel_shape"])
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(x)), k, tuple(a.get("strides", k))).numpy()


def _int_quant(inst, x, scale, zeropt, bitwidth):
    """qonnx's Quant without its cast of the result to float32."""
    from qonnx.custom_op.general.intquant import int_quant

    attrs = (inst.get_nodeattr(a) for a in ("signed", "narrow", "rounding_mode"))
    return np.asarray(int_quant(x, scale, zeropt, bitwidth, *attrs), dtype=np.float64)


# Custom ops whose python execution keeps float64. The others (QuantAvgPool2d, MaxPoolNHWC,
# the fpgadataflow ops: onnxruntime or float32 inside) run in float32 on integer operands.
FLOAT64_CUSTOM = {"MultiThreshold", "Trunc", "Im2Col"}

# Standard ops onnxruntime cannot run in float64.
FLOAT64_OPS = {"Conv": _conv, "AveragePool": _average_pool}


def _widen_reshape_target(shape: np.ndarray, n: int) -> np.ndarray:
    shape = np.array(shape, dtype=np.int64, copy=True)
    if shape.size and shape[0] == 1:
        shape[0] = n
    return shape


def run_finn_reference(model, sample: np.ndarray, partition=None, work_dir: str | Path | None = None) -> dict:
    """FINN's own execute_onnx on one sample [1, ...] (full context), for cross-checks.

    A post-partition stage is run as FINN's verification does: the parent graph with
    its StreamingDataflowPartition pointing at the (generic) stage model.
    """
    ensure_finn()
    import tempfile

    from finn.core.onnx_exec import execute_onnx
    from qonnx.custom_op.registry import getCustomOp

    model = to_generic(model)
    in_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for node in model.get_nodes_by_op_type("StreamingDataflowPartition"):
            inst = getCustomOp(node)
            child = partition if partition is not None else _load(inst.get_nodeattr("model"))
            path = str(Path(tmp) / f"{node.name}.onnx")
            to_generic(child).save(path)
            inst.set_nodeattr("model", path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return execute_onnx(model, {in_name: sample.astype(np.float32)}, return_full_exec_context=True)


def _load(path):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(path)
