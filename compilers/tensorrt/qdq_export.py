"""Finalize an exported QDQ ONNX into the explicit-quantization form TensorRT builds from.

Input: torch.onnx.export(dynamo=False) of a stripped NNCF model (or a Brevitas QCDQ
export). Passes, in order, each meant to leave the model's function unchanged:

1. inline Identity / Constant nodes (onnxoptimizer), name unnamed nodes;
2. fold each weight QuantizeLinear of a float constant into an INT8 initializer read by
   its DequantizeLinear (per-channel, axis 0 stays as exported); a Clip between them
   (Brevitas narrow range) is applied to the INT8 values and dropped: exact;
3. drop a Clip between an activation Q and its DQ. TensorRT's Q clamps to [-128, 127]; a
   narrow-range Clip only differs where a value would quantize to -128, which the parity
   check below would show;
4. fold BatchNormalization into the Conv before it. With an INT8 weight the integers stay
   as trained and only the DQ scale (per output channel) and the bias change; a channel
   with a negative BN gain gets its integers negated, so scales stay positive;
5. batch dimension: dynamic ("batch", default: one engine serves TensorRT optimisation
   profiles 1..16) or a fixed size;
6. onnx.checker (full) + strict shape inference; check_trt_layout.

Then onnxruntime runs the graph before and after on the same inputs with its graph
optimisations off (so both are the plain Q/DQ arithmetic), and the result is refused if
any output moved by more than `rtol` of the output range.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxoptimizer
from onnx import TensorProto, helper, numpy_helper

from compilers.tensorrt.qdq_layout import GraphIndex, attr, check_trt_layout, load_model
from core import atomic
from core.errors import UserError
from quant.preprocess import to_input_np

MIN_OPSET = 13  # per-channel DequantizeLinear (axis) needs opset 13


@dataclass
class FinalizeReport:
    source: str
    output: str
    batch: str | int  # "dynamic" or the fixed batch size
    weights_folded: int = 0
    weight_clips_folded: int = 0
    activation_clips_removed: int = 0
    batchnorms_folded: int = 0
    batchnorms_kept: list[str] = field(default_factory=list)  # "node: reason"
    parity_inputs: int = 0
    max_abs_diff: float = 0.0
    argmax_agreement: float = 1.0
    layout: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def finalize_qdq(
    onnx_in: str | Path,
    onnx_out: str | Path,
    batch: int | None = None,
    check_inputs: np.ndarray | None = None,
    rtol: float = 0.02,
    seed: int = 0,
) -> FinalizeReport:
    """Rewrite `onnx_in` into TensorRT's preferred QDQ form at `onnx_out` (atomically).

    batch: None for a dynamic batch dimension, or a fixed size.
    check_inputs: float model inputs [N, C, H, W] for the parity check; default 32 seeded
    random uint8 images through quant.preprocess.
    rtol: refuse the result if an output moved by more than rtol x the largest |output|.
    Folding BatchNorm rounds the float math differently, which can move a value across a
    rounding boundary of the next Q: one quantization step, a small fraction of the
    output range. A wrong fold moves outputs by their own size.
    """
    if batch is not None and batch < 1:
        raise UserError(f"batch must be a positive size or None for dynamic, got {batch}")
    original, label = load_model(onnx_in)
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UserError(f"{label}: opset {opset} is too old for per-channel Q/DQ; export with opset_version >= {MIN_OPSET}")
    report = FinalizeReport(source=str(onnx_in), output=str(onnx_out), batch="dynamic" if batch is None else batch)

    _name_nodes(original)  # renaming changes nothing it computes (and onnxruntime needs unique names)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    _drop_initializer_inputs(model)
    model = onnxoptimizer.optimize(model, ["eliminate_identity", "extract_constant_to_initializer"])
    report.weights_folded, report.weight_clips_folded = _fold_weight_quantize(model)
    report.activation_clips_removed = _remove_activation_clips(model)
    report.batchnorms_folded, report.batchnorms_kept = _fold_batchnorm(model)
    _set_batch(model, batch)
    model = onnxoptimizer.optimize(model, ["eliminate_deadend", "eliminate_unused_initializer"])
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    report.layout = check_trt_layout(model, label=f"{label} (finalized)").to_dict()
    report.layout["model"] = str(onnx_out)

    x = check_inputs if check_inputs is not None else _default_inputs(original, seed)
    before = _run_ort(original, x)
    try:
        after = _run_ort(model, x, label=f"{label} finalized")
    except RuntimeError as e:
        if batch is not None:
            raise
        raise UserError(f"{e}: with a dynamic batch; export with a dynamic batch axis, or pass batch=N") from None
    report.parity_inputs = len(x)
    report.max_abs_diff = float(np.max(np.abs(before - after)))
    report.argmax_agreement = float(np.mean(before.argmax(1) == after.argmax(1)))
    limit = rtol * float(np.max(np.abs(before))) + 1e-6
    if report.max_abs_diff > limit:
        raise RuntimeError(f"finalize_qdq changed {label}'s outputs: max |d| {report.max_abs_diff:.3g} > {limit:.3g}")

    with atomic.atomic_path(onnx_out) as tmp:
        onnx.save(model, str(tmp))
    return report


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: messages name nodes, and passes find them by name."""
    taken: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in taken:
            name = node.name or f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
        taken.add(node.name)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Older exporters list initializers as graph inputs too: keep only real inputs."""
    inits = {t.name for t in model.graph.initializer}
    for i in reversed(range(len(model.graph.input))):
        if model.graph.input[i].name in inits:
            del model.graph.input[i]


def _remove_nodes(model: onnx.ModelProto, nodes) -> None:
    """Delete nodes in place (by their unique names): references to the others stay valid."""
    drop = {n.name for n in nodes}
    for i in reversed(range(len(model.graph.node))):
        if model.graph.node[i].name in drop:
            del model.graph.node[i]


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    """Add or replace initializer `name`."""
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return name
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _unique(g: GraphIndex, base: str) -> str:
    name, i = base, 0
    while name in g.inits or name in g.producer:
        i += 1
        name = f"{base}_{i}"
    return name


def _quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear to INT8: saturate(round_half_even(x / scale) + zp)."""
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, -128, 127).astype(np.int8)


def _fold_weight_quantize(model: onnx.ModelProto) -> tuple[int, int]:
    """Q(float const) [-> Clip(const)]* -> DQ  and  int8 const -> Clip(const)* -> DQ
    become  int8 const -> DQ. The bypassed nodes are left for eliminate_deadend."""
    g = GraphIndex(model)
    folded, clips = 0, set()
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        chain, t = [], dq.input[0]
        while (src := g.producer.get(t)) is not None and src.op_type == "Clip" and _const_bounds(g, src) is not None:
            chain.append(src)
            t = src.input[0]
        values = _int8_weight(g, t)
        if values is None or (not chain and g.is_const(t)):
            continue  # not a weight, or already an INT8 constant read directly
        for clip in reversed(chain):
            values = np.clip(values, *_const_bounds(g, clip)).astype(np.int8)
        name = _set_init(model, _unique(g, f"{dq.name}.w_int8"), values)
        g.inits[name] = model.graph.initializer[-1]
        dq.input[0] = name
        folded += 1
        clips.update(c.name for c in chain)
    return folded, len(clips)


def _const_bounds(g: GraphIndex, clip: onnx.NodeProto) -> tuple[int, int] | None:
    """(min, max) of a Clip with constant (or absent) bounds."""
    names = (list(clip.input) + ["", ""])[1:3]
    values = [g.const(n) if n else None for n in names]
    if any(n and v is None for n, v in zip(names, values)):
        return None
    lo, hi = values
    return (-128 if lo is None else int(lo), 127 if hi is None else int(hi))


def _int8_weight(g: GraphIndex, t: str) -> np.ndarray | None:
    """The INT8 values of tensor t: an INT8 constant, or a Q of a float constant."""
    value = g.const(t)
    if value is not None:
        return value if value.dtype == np.int8 else None
    q = g.producer.get(t)
    if q is None or q.op_type != "QuantizeLinear":
        return None
    w, s = g.const(q.input[0]), g.const(q.input[1])
    zp = g.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if w is None or s is None or zp is None or zp.dtype != np.int8:
        return None  # not a weight, or not int8: check_trt_layout will say which
    return _quantize(w, s, zp, attr(q, "axis", 1) % max(w.ndim, 1))


def _remove_activation_clips(model: onnx.ModelProto) -> int:
    """Q -> Clip -> DQ on a computed tensor: the DQ reads the Q directly."""
    g = GraphIndex(model)
    removed = set()
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        clip = g.producer.get(dq.input[0])
        if clip is None or clip.op_type != "Clip":
            continue
        q = g.producer.get(clip.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            dq.input[0] = q.output[0]
            removed.add(clip.name)
    return len(removed)


def _fold_batchnorm(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """Conv(x, W[, b]) -> BatchNormalization  becomes  Conv(x, W', b')."""
    folded, kept = 0, []
    for bn_name in [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]:
        g = GraphIndex(model)
        bn = next(n for n in model.graph.node if n.name == bn_name)
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv":
            continue
        reason = _bn_fold_blocker(g, conv, bn)
        if reason is None:
            reason = _fold_one_bn(model, g, conv, bn)
        if reason:
            kept.append(f"{bn.name}: {reason}")
            continue
        if bn.output[0] in g.graph_outputs:
            conv.output[0] = bn.output[0]
        else:
            for user in g.consumers.get(bn.output[0], []):
                for i, name in enumerate(user.input):
                    if name == bn.output[0]:
                        user.input[i] = conv.output[0]
        _remove_nodes(model, [bn])
        folded += 1
    return folded, kept


def _bn_fold_blocker(g: GraphIndex, conv, bn) -> str | None:
    if len(g.consumers.get(conv.output[0], [])) != 1 or conv.output[0] in g.graph_outputs:
        return "the convolution output has other readers"
    if attr(bn, "training_mode", 0) or len([o for o in bn.output if o]) > 1:
        return "BatchNormalization in training mode"
    if any(g.const(i) is None for i in bn.input[1:5]):
        return "BatchNormalization parameters are not constants"
    if len(conv.input) > 2 and conv.input[2] and g.const(conv.input[2]) is None:
        return "the convolution bias is not a constant"
    return None


def _fold_one_bn(model, g: GraphIndex, conv, bn) -> str | None:
    gamma, beta, mean, var = (g.const(i).astype(np.float64) for i in bn.input[1:5])
    k = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    w_name = conv.input[1]
    dq = g.producer.get(w_name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in g.inits:
        reason = _scale_dq_weight(model, g, dq, k)
        if reason:
            return reason
    elif w_name in g.inits and len(g.consumers[w_name]) == 1:
        w = g.const(w_name).astype(np.float64)
        _set_init(model, w_name, (w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32))
    else:
        return "the weight is neither a constant nor a DequantizeLinear of an INT8 constant"
    bias = g.const(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(k)
    new_bias = ((bias - mean) * k + beta).astype(np.float32)
    name = _set_init(model, _unique(g, f"{conv.name}.bias_bn"), new_bias)
    if len(conv.input) > 2:
        conv.input[2] = name
    else:
        conv.input.append(name)
    return None


def _scale_dq_weight(model, g: GraphIndex, dq, k: np.ndarray) -> str | None:
    """Fold a per-output-channel gain k into DQ(int8 W): scale * |k|, negate W where k < 0."""
    if len(g.consumers[dq.output[0]]) != 1 or len(g.consumers[dq.input[0]]) != 1:
        return "the quantized weight is shared with another layer"
    w = g.const(dq.input[0])
    scale = g.const(dq.input[1]).astype(np.float64)
    zp = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int8)
    if w.dtype != np.int8 or np.any(zp != 0):
        return "the weight is not symmetric INT8"
    if scale.size > 1 and attr(dq, "axis", 1) % w.ndim != 0:
        return "the weight scale is not per output channel"
    neg = k < 0
    if np.any(w[neg] == -128):
        return "a channel with a negative BatchNorm gain holds -128, which has no INT8 negation"
    w = w.copy()
    w[neg] = -w[neg]
    new_scale = (np.broadcast_to(scale.reshape(-1), k.shape) * np.abs(k)).astype(np.float32)
    dq.input[0] = _set_init(model, _unique(g, f"{dq.name}.w_bn"), w)
    g.inits[dq.input[0]] = model.graph.initializer[-1]
    dq.input[1] = _set_init(model, _unique(g, f"{dq.name}.scale_bn"), new_scale)
    g.inits[dq.input[1]] = model.graph.initializer[-1]
    zp_name = _set_init(model, _unique(g, f"{dq.name}.zp_bn"), np.zeros(k.shape, np.int8))
    if len(dq.input) > 2:
        dq.input[2] = zp_name
    else:
        dq.input.append(zp_name)
    _set_axis(dq, 0)
    return None


def _set_axis(node: onnx.NodeProto, axis: int) -> None:
    for a in node.attribute:
        if a.name == "axis":
            a.i = axis
            return
    node.attribute.append(helper.make_attribute("axis", axis))


def _set_batch(model: onnx.ModelProto, batch: int | None) -> None:
    del model.graph.value_info[:]  # re-inferred, with the new batch dimension
    for vi in (*model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        dims[0].Clear()
        if batch is None:
            dims[0].dim_param = "batch"
        else:
            dims[0].dim_value = batch


def input_spec(model: onnx.ModelProto) -> tuple[str, int | None, tuple[int, ...]]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"expected a model with one image input, found {len(inputs)}: {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value or None
    return inputs[0].name, batch, tuple(d.dim_value for d in dims[1:])


def _default_inputs(model: onnx.ModelProto, seed: int, n: int = 32) -> np.ndarray:
    _, _, chw = input_spec(model)
    if not chw or any(d <= 0 for d in chw):
        raise UserError(f"input shape {chw} is not static apart from the batch; pass check_inputs")
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, *chw), dtype=np.uint8)
    return to_input_np(pixels)


def _run_ort(model: onnx.ModelProto, x: np.ndarray, label: str = "model") -> np.ndarray:
    """Plain Q/DQ arithmetic on onnxruntime CPU (no graph fusions), batch by batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name, batch, _ = input_spec(model)
    step = batch or len(x)
    if len(x) % step:
        raise UserError(f"{label}: {len(x)} check inputs do not split into batches of {step}")
    try:
        outs = [sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)]
        if batch is None and step > 1:  # a dynamic batch must also run one image at a time
            one = sess.run(None, {name: x[:1]})[0]
            if one.shape[0] != 1:
                raise ValueError(f"batch of 1 gave an output of shape {one.shape}")
    except Exception as e:
        raise RuntimeError(f"{label} does not run on onnxruntime: {str(e).splitlines()[0]}") from None
    return np.concatenate(outs).astype(np.float32)
