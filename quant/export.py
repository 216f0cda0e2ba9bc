"""QONNX export of the Brevitas models, and a check that the graph computes what the model does.

    path = export_qonnx(model, (64, 64), "build/model.qonnx.onnx")
    check_qonnx(path, model, inputs)  # -> {"max_abs_diff", "argmax_agreement", "n"}

The exported graph takes float [1, 1, H, W] in [0, 1] (batch 1: what FINN wants) and is
cleaned up (constant folding, unique names) with inferred shapes. Export is deterministic:
the same weights give the same bytes (trace input fixed, model in eval mode, tensor names
from cleanup, no producer version or doc strings that could vary).

The model is traced in float64 and written as an ordinary float32 graph whose float
initializers also carry their float64 values (quant/float64_values.py): FINN derives its
integer thresholds from those, so the FPGA design matches the model evaluated exactly
(`predict(..., float64=True)`), not one float32 rounding of it.

It uses torch's TorchScript exporter (dynamo=False): 2-3x faster here than the dynamo one,
it writes the head's flatten as a batch-agnostic Flatten (dynamo: Reshape to [1, C]), and
it is the graph finn-plus 1.6.1 was checked to lower fully (resnet8, effnet_lite).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import UserError
from quant import float64_values


def export_qonnx(model: nn.Module, in_size: tuple[int, int], path: str | Path) -> Path:
    """Export a Brevitas model (eval mode) to a cleaned-up QONNX file at `path`, atomically."""
    import onnx
    from brevitas.export import export_qonnx as brevitas_export
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    if not _is_brevitas(model):
        raise UserError(f"export_qonnx needs a quantized (Brevitas) model; {type(model).__name__} is float: "
                        f"create it with quantized=True (effnet_b0 has no quantized variant: use npu/gpu)")
    built = tuple(getattr(model, "create_args", {}).get("in_size", in_size))
    if tuple(in_size) != built:
        raise UserError(f"export_qonnx: in_size {tuple(in_size)} differs from the {built} the model was built for "
                        f"(its global pool covers exactly that map)")
    path = Path(path)
    exact = copy.deepcopy(model).double().eval()  # traced in float64: see quant/float64_values.py
    with atomic_path(path) as tmp, torch.no_grad():
        brevitas_export(exact, input_t=torch.zeros(1, 1, *in_size, dtype=torch.float64), export_path=str(tmp),
                        dynamo=False)
        proto = onnx.load(str(tmp))
        float64_values.demote(proto)
        wrapper = cleanup_model(float64_values.exact(proto))
        proto = float64_values.plain(wrapper.transform(InferShapes())).model
        float64_values.widen(proto)  # every float initializer carries its value, also its own ones
        proto.producer_version = ""
        proto.doc_string = ""
        for node in proto.graph.node:
            node.doc_string = ""
        onnx.save(proto, str(tmp))
    return path


def check_qonnx(path: str | Path, model: nn.Module, inputs: np.ndarray) -> dict:
    """Run the QONNX graph (qonnx python execution) and the model on `inputs` float [N,1,H,W].

    Returns max_abs_diff of the logits, argmax_agreement (fraction) and n. The whole batch
    runs in one execution when the graph's batch dimension can be resized, else per sample.
    """
    from qonnx.core.modelwrapper import ModelWrapper

    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or inputs.shape[1] != 1:
        raise UserError(f"check_qonnx: inputs must be float [N,1,H,W], got shape {inputs.shape}")
    graph = ModelWrapper(str(path))
    want = tuple(graph.get_tensor_shape(graph.graph.input[0].name))
    if tuple(inputs.shape[2:]) != want[2:]:
        raise UserError(f"check_qonnx: inputs are {inputs.shape[2]}x{inputs.shape[3]} but {path} takes "
                        f"{want[2]}x{want[3]}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(torch.from_numpy(inputs))
            expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()  # the decision output
    finally:
        model.train(was_training)
    got = _execute(graph, inputs)
    return dict(max_abs_diff=float(np.max(np.abs(got - expected))),
                argmax_agreement=float(np.mean(got.argmax(1) == expected.argmax(1))), n=int(len(inputs)))


def _execute(graph, inputs: np.ndarray) -> np.ndarray:
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    def run(g, x):
        name_in, name_out = g.graph.input[0].name, g.graph.output[0].name
        return execute_onnx(g, {name_in: x})[name_out]

    if _batchable(graph):
        batched = graph.transform(ChangeBatchSize(len(inputs))).transform(InferShapes())
        if all(batched.get_tensor_shape(t) is not None for n in batched.graph.node for t in n.output):
            return np.asarray(run(batched, inputs), dtype=np.float32).reshape(len(inputs), -1)
    return np.concatenate([np.asarray(run(graph, x[None]), dtype=np.float32).reshape(1, -1) for x in inputs])


def _batchable(graph) -> bool:
    # ChangeBatchSize rewrites the batch entry of constant Reshape shapes (the export's
    # flatten is Reshape [1, C]); a computed shape would keep batch 1.
    return all(graph.get_initializer(n.input[1]) is not None for n in graph.graph.node if n.op_type == "Reshape")


def _is_brevitas(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("brevitas.") for m in model.modules())
