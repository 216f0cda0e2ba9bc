"""Finalize an exported QDQ ONNX into the explicit-quantization form TensorRT builds from.

Input: torch.onnx.export(dynamo=False) of a stripped NNCF model whose BatchNorm was folded
into its convolutions before quantization (qdeploy.stages.int8.fold_batchnorm; TensorRT
folds a leftover BatchNormalization itself). Passes, in order, each meant to leave the
model's function unchanged:

1. inline Identity / Constant nodes (onnxoptimizer), name unnamed nodes;
2. fold each weight QuantizeLinear of a float constant into an INT8 initializer read by
   its DequantizeLinear (per-channel, axis 0 stays as exported): exact;
3. batch dimension: dynamic ("batch", default: one engine serves TensorRT optimisation
   profiles 1..16) or a fixed size;
4. onnx.checker (full) + strict shape inference; check_trt_layout.

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
from onnx import numpy_helper

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
    The passes are exact; a wrong one moves outputs by their own size.
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
    report.weights_folded = _fold_weight_quantize(model)
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


def _fold_weight_quantize(model: onnx.ModelProto) -> int:
    """Q(float const) -> DQ  becomes  int8 const -> DQ. The bypassed Q is left for eliminate_deadend."""
    g = GraphIndex(model)
    folded = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        t = dq.input[0]
        values = _int8_weight(g, t)
        if values is None or g.is_const(t):
            continue  # not a weight, or already an INT8 constant read directly
        name = _set_init(model, _unique(g, f"{dq.name}.w_int8"), values)
        g.inits[name] = model.graph.initializer[-1]
        dq.input[0] = name
        folded += 1
    return folded


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
