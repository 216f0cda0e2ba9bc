"""Reject, before the flow starts, a QONNX model that FINN cannot lower to hardware.

FINN fails late and obscurely on these (an assertion deep in streamlining, a graph
that cannot be partitioned, shapes corrupted by a transformation). Each rule here
names the offending node, the PyTorch layer it came from when the exporter recorded
it, the rule, and the fix. `find_problems` lists every problem; `check_lowerable`
raises the first as a UserError.

Rules (see ../shared/notes/fpga-finn.md for what was measured):
- activation:      Sigmoid / SiLU (swish) / HardSwish / HardSigmoid / Tanh / GELU ... have
                   no FINN hardware layer; use ReLU / ReLU6.
- softmax:         Softmax / LogSoftmax inside the model; export logits, apply it on the host.
- squeeze-excite:  a Mul of a feature map by a per-channel tensor computed from the graph.
- float-input:     a Conv / MatMul / Gemm / pooling reads a tensor that no quantizer
                   produced (e.g. after ReduceMean / GlobalAveragePool from
                   nn.AdaptiveAvgPool2d, or after a float BatchNorm).
- float-weights:   a Conv / MatMul / Gemm weight that is not quantized.
- residual-scale:  an Add of two quantized tensors with different scales.
- maxpool-fork:    a MaxPool whose output feeds more than one node.
- avgpool-after-maxpool: a truncating average pool reading a MaxPool output.
- avgpool:         an average pool that is not a lowerable TruncAvgPool2d: no Trunc after
                   it, RoundTo8bit (not FLOOR), padding, a nonzero zero point; for a
                   non-square window or unequal strides (lowered by custom_ops.py) also
                   a signed input, a left shift or a sum that could clamp.
- conv-1d-map:     a Conv with a kernel (or padding) > 1 along an axis of size 1 (e.g. a
                   3x3 conv on a 1 x W map, when the input height / total stride
                   reaches 1): FINN treats a size-1 axis as a 1-D dummy dimension and its
                   Im2Col asserts "Unexpected kernel shape and padding".
- concat-shape:    a Concat of 4-D pooled vectors [N, C, 1, 1]: FINN's StreamingConcat joins
                   flat vectors; flatten each input and concatenate on the last axis.
- concat-scale:    a Concat of quantized tensors with different scales: quantize every
                   input with the same QuantReLU / QuantIdentity instance.
- channel-scale:   an activation quantizer with one scale per channel feeding a regular
                   (not depthwise) Conv, a MatMul / Gemm or a pool: FINN moves a per-channel
                   float scale only past depthwise convs, so the layer keeps a float input
                   and stays in software (partitioning fails).
- bipolar-padding: a padded Conv reading bipolar (1-bit signed, BipolarQuant) activations:
                   FINN computes it as XNOR-popcount on {0, 1} bits, where a padded zero
                   counts as -1 (FINN's CNV-W1A1 uses padding=0 for this).
- graph-io:        not exactly one input [1, C, H, W], no output, or an output no node
                   computes (a QuantTensor returned by forward()).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from core.errors import UserError

_ACTIVATIONS = {
    "Sigmoid": "Sigmoid/SiLU (swish)",
    "HardSigmoid": "HardSigmoid",
    "HardSwish": "HardSwish",
    "Tanh": "Tanh",
    "Gelu": "GELU",
    "Erf": "GELU (Erf)",
    "Elu": "ELU",
    "Selu": "SELU",
    "Celu": "CELU",
    "Mish": "Mish",
    "Softplus": "Softplus",
    "Softsign": "Softsign",
    "LeakyRelu": "LeakyReLU",
    "PRelu": "PReLU",
    "Exp": "Exp",
    "Log": "Log",
}
_SOFTMAX = {"Softmax", "LogSoftmax"}
_QUANTIZERS = {"Quant", "BipolarQuant", "Trunc", "MultiThreshold"}
# Ops whose output is quantized when their data input is (they move or select values).
_TRANSPARENT = {
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Pad",
    "Slice",
    "Split",
    "Concat",
    "Relu",
}
_COMPUTE = {"Conv": 0, "MatMul": 0, "Gemm": 0}
_POOLS = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "GlobalMaxPool", "ReduceMax"}
_FLOAT_HINTS = {
    "ReduceMean": "nn.AdaptiveAvgPool2d / mean() export as float ReduceMean: use "
    "TruncAvgPool2d(kernel_size=H, stride=H, trunc_quant=TruncTo8bit) right after a QuantReLU",
    "GlobalAveragePool": "nn.AdaptiveAvgPool2d exports as a float GlobalAveragePool: use "
    "TruncAvgPool2d(kernel_size=H, stride=H, trunc_quant=TruncTo8bit) right after a QuantReLU",
    "AveragePool": "a float nn.AvgPool2d: use TruncAvgPool2d(..., trunc_quant=TruncTo8bit)",
    "BatchNormalization": "a BatchNorm output must be re-quantized (QuantReLU / QuantIdentity) "
    "before the next layer",
    "Add": "re-quantize the sum with a QuantReLU / QuantIdentity before the next layer",
}


RULES = (
    "activation",
    "softmax",
    "squeeze-excite",
    "maxpool-fork",
    "float-weights",
    "float-input",
    "residual-scale",
    "avgpool-after-maxpool",
    "avgpool",
    "conv-1d-map",
    "channel-scale",
    "bipolar-padding",
    "concat-shape",
    "concat-scale",
)


@dataclass(frozen=True)
class Problem:
    node: str
    op_type: str
    layer: str  # PyTorch module path recorded by the exporter, "" if unknown
    rule: str
    hint: str

    def message(self, source: str = "model") -> str:
        where = f"layer '{self.layer}' (node {self.node}, {self.op_type})" if self.layer else f"node {self.node} ({self.op_type})"
        return f"{source}: {where} cannot be lowered to FINN [{self.rule}]: {self.hint}"


EXPORTED_NAME = "qdeploy.exported_name"  # a node's name as exported, kept across qonnx's renaming


def keep_exported_names(model) -> None:
    """Record each node's exported name (TorchScript: "/body/body.3/Conv") in its metadata,
    in place, so a layer can still be named after qonnx's cleanup renames the node (Conv_1)."""
    for node in model.graph.node:
        if node.name and not any(p.key == EXPORTED_NAME for p in node.metadata_props):
            prop = node.metadata_props.add()
            prop.key, prop.value = EXPORTED_NAME, node.name


def layer_name(node) -> str:
    """The PyTorch module path the torch exporter recorded for `node`, or ""."""
    for prop in node.metadata_props:
        if prop.key == EXPORTED_NAME and prop.value.startswith("/"):  # TorchScript: /body/body.3/Conv
            path: list[str] = []
            for part in prop.value.strip("/").split("/")[:-1]:
                if "quant" in part or part in ("export_handler", "activation_impl", "fused_activation_quant_proxy"):
                    break
                if path and part.startswith(path[-1] + "."):  # a Sequential's child: body/body.3 -> body.3
                    path[-1] = part
                else:
                    path.append(part)
            return ".".join(path)
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            if len(scopes) < 2:
                return ""
            parts = []
            for part in scopes[-2].split("."):
                if "quant" in part or part in ("export_handler", "activation_impl", "fused_activation_quant_proxy"):
                    break
                parts.append(part)
            return ".".join(parts)
    return ""


class _Graph:
    def __init__(self, model):
        self.model = model
        self.init = {t.name for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inputs = {i.name for i in model.graph.input}

    def is_const(self, name: str) -> bool:
        if name in self.init:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type in _QUANTIZERS | {"Constant"} and all(self.is_const(i) for i in p.input[:1])

    def float_source(self, name: str, seen=None):
        """The node producing an unquantized value that reaches tensor `name`, or None."""
        seen = set() if seen is None else seen
        if name in seen or name in self.inputs or self.is_const(name):
            return None
        seen.add(name)
        node = self.producer.get(name)
        if node is None or node.op_type in _QUANTIZERS:
            return None
        if node.op_type in _TRANSPARENT:
            data = node.input[:1] if node.op_type != "Concat" else node.input
            for i in data:
                src = self.float_source(i, seen)
                if src is not None:
                    return src
            return None
        if node.op_type == "Add" and all(self.float_source(i, seen) is None for i in node.input):
            return None  # sum of quantized tensors: checked by the residual-scale rule
        return node

    def shape(self, name: str):
        try:
            return self.model.get_tensor_shape(name)
        except Exception:
            return None


def find_problems(model) -> list[Problem]:
    """Every reason FINN cannot lower `model` (a QONNX ModelWrapper), in graph order."""
    from qonnx.util.cleanup import cleanup_model

    keep_exported_names(model)
    model = cleanup_model(model)
    g = _Graph(model)
    problems: list[Problem] = []

    def add(node, rule, hint):
        problems.append(Problem(node.name, node.op_type, layer_name(node), rule, hint))

    dyn_inputs = [i for i in model.graph.input if i.name not in g.init]
    if len(dyn_inputs) != 1 or len(model.graph.output) < 1:
        raise UserError(
            f"the model has {len(dyn_inputs)} inputs and {len(model.graph.output)} outputs: "
            "FINN lowers one image input [1, C, H, W] to one or more outputs (logits, a map)"
        )
    produced = set(g.producer)
    for out in model.graph.output:
        if out.name not in produced and out.name not in g.inputs:
            raise UserError(
                f"model output '{out.name}' is computed by no node [graph-io]: a forward() returning a "
                "Brevitas QuantTensor exports its scale/zero-point/bit-width as extra outputs; return .value"
            )
    in_shape = g.shape(dyn_inputs[0].name)
    if in_shape is None or len(in_shape) != 4 or in_shape[0] != 1:
        raise UserError(
            f"model input '{dyn_inputs[0].name}' has shape {in_shape}: export with a batch-1 "
            "NCHW input, e.g. torch.zeros(1, 1, H, W)"
        )

    for node in model.graph.node:
        op = node.op_type
        if op in _ACTIVATIONS:
            add(node, "activation", f"{_ACTIVATIONS[op]} has no FINN hardware layer; use ReLU/ReLU6 (QuantReLU)")
        elif op in _SOFTMAX:
            add(node, "softmax", f"{op} inside the model does not lower; export logits and apply {op} on the host")
        elif op == "Mul" and _is_squeeze_excite(g, node):
            add(node, "squeeze-excite", "a feature map scaled by a per-channel gate computed from it "
                "(squeeze-excite) does not lower; remove the SE block (EfficientNet-Lite / MobileNetV2 style)")
        elif op in _COMPUTE:
            why = _conv_1d_problem(g, node) if op == "Conv" else ""
            if why:
                add(node, "conv-1d-map", why)
            elif op == "Conv" and _padded(node) and _reads_bipolar(g, node.input[0]):
                add(node, "bipolar-padding", "a padded conv reads bipolar (1-bit, +-1) activations: FINN's XNOR-popcount "
                    "layer counts a padded zero as -1; use padding=0 here (as FINN's CNV-W1A1) or 2-bit activations")
            src = g.float_source(node.input[0])
            if src is not None:
                problems.append(_float_input(src, node, "put a quantizer (QuantIdentity / QuantReLU) in front of it"))
            w = node.input[1]
            wp = g.producer.get(w)
            if w in g.init or (wp is not None and wp.op_type not in _QUANTIZERS):
                add(node, "float-weights", "weights are not quantized: use QuantConv2d / QuantLinear")
        elif op in _POOLS:
            src = g.float_source(node.input[0])
            if src is not None:
                problems.append(_float_input(src, node, "put a quantizer in front of it"))
            elif op in ("ReduceMean", "GlobalAveragePool") and not _followed_by_quantizer(g, node):
                add(node, "float-input", _FLOAT_HINTS[op])
            elif op == "AveragePool" and _reads_maxpool(g, node.input[0]):
                add(node, "avgpool-after-maxpool", "a truncating average pool right after a MaxPool cannot "
                    "infer its input sign; put the pool after a QuantReLU (not after the MaxPool)")
            elif op == "AveragePool":
                why = _avgpool_problem(g, node)
                if why:
                    add(node, "avgpool", why)
        elif op == "Add":
            _check_residual(g, node, add)
        elif op == "Concat":
            _check_concat(g, node, add)
        if op == "Quant" and not g.is_const(node.input[0]):
            _check_channel_scale(g, node, problems)
        if op == "MaxPool" and len(g.consumers.get(node.output[0], [])) > 1:
            add(node, "maxpool-fork", "a MaxPool whose output feeds several nodes corrupts FINN's "
                "layout conversion; use a stride-2 conv stem (or a single consumer)")
    # Architecture problems first (they need a model change), then one problem per node.
    order = {rule: i for i, rule in enumerate(RULES)}
    seen, unique = set(), []
    for p in sorted(problems, key=lambda p: order[p.rule]):
        if p.node not in seen:
            seen.add(p.node)
            unique.append(p)
    return unique


def check_lowerable(model, source: str = "model") -> None:
    """Raise UserError naming the first node FINN cannot lower; return None if none."""
    problems = find_problems(model)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(problems[0].message(source) + more)


def _is_squeeze_excite(g: _Graph, node) -> bool:
    if any(g.is_const(i) for i in node.input):
        return False
    shapes = [g.shape(i) for i in node.input]
    if any(s is None or len(s) != 4 for s in shapes):
        return False
    (a, b) = shapes
    spatial = [int(np.prod(s[2:])) for s in shapes]
    return a[1] == b[1] and min(spatial) == 1 and max(spatial) > 1


def _followed_by_quantizer(g: _Graph, node) -> bool:
    nxt = g.consumers.get(node.output[0], [])
    return bool(nxt) and all(n.op_type in _QUANTIZERS for n in nxt)


def _avgpool_problem(g: _Graph, node) -> str:
    """Why FINN cannot lower this (quantized-input) AveragePool, or ""."""
    from qonnx.util.basic import get_by_name

    from compilers.finn.custom_ops import needs_rect, rect_pool_problem

    nxt = g.consumers.get(node.output[0], [])
    if len(nxt) != 1 or nxt[0].op_type != "Trunc":
        return ("an average pool lowers only as TruncAvgPool2d(trunc_quant=TruncTo8bit) (AveragePool -> Trunc); "
                "this one has no single Trunc after it")
    if needs_rect(node):
        return rect_pool_problem(g.model, node, nxt[0]) or ""
    mode = get_by_name(nxt[0].attribute, "rounding_mode")
    if mode is None or mode.s.upper() != b"FLOOR":
        return "the pool must truncate with FLOOR rounding: use trunc_quant=TruncTo8bit (not RoundTo8bit)"
    pads = get_by_name(node.attribute, "pads")
    if pads is not None and any(pads.ints):
        return "padded average pools do not lower (use padding=0)"
    zp = g.model.get_initializer(nxt[0].input[2]) if len(nxt[0].input) > 2 else None
    if zp is not None and np.any(np.asarray(zp) != 0):
        return "the Trunc's zero point must be 0"
    return ""


def _reads_maxpool(g: _Graph, name: str) -> bool:
    p = g.producer.get(name)
    while p is not None and p.op_type in ("Reshape", "Identity", "Transpose"):
        p = g.producer.get(p.input[0])
    return p is not None and p.op_type == "MaxPool"


def _quant_scale(g: _Graph, name: str):
    """(scale, zero point, bits) of the quantizer behind `name`, through transparent ops."""
    p = g.producer.get(name)
    while p is not None and p.op_type in _TRANSPARENT and p.op_type != "Concat":
        p = g.producer.get(p.input[0])
    if p is None or p.op_type != "Quant":
        return None
    vals = [g.model.get_initializer(i) for i in p.input[1:4]]
    if any(v is None for v in vals):
        return None
    return tuple(np.asarray(v, dtype=np.float64) for v in vals)


def _check_residual(g: _Graph, node, add) -> None:
    if any(g.is_const(i) for i in node.input):
        return
    qa, qb = (_quant_scale(g, i) for i in node.input)
    if qa is None or qb is None:
        return
    same = all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(qa, qb))
    if not same:
        add(node, "residual-scale", "the two operands of this residual Add are quantized with different "
            "scales; quantize both with the same QuantIdentity instance")


def _check_channel_scale(g: _Graph, quant, problems: list) -> None:
    """A per-channel activation scale must reach only depthwise convs (FINN's MoveMulPastDWConv)."""
    scale = g.model.get_initializer(quant.input[1])
    if scale is None or np.size(scale) <= 1:
        return
    todo, seen = list(g.consumers.get(quant.output[0], [])), set()
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in _TRANSPARENT - {"Concat"} and node.op_type != "Relu":
            todo += g.consumers.get(node.output[0], [])
            continue
        if node.op_type == "Conv" and _is_depthwise(g, node):
            continue
        if node.op_type in _COMPUTE or node.op_type in _POOLS:
            who = layer_name(quant)
            problems.append(Problem(
                node.name, node.op_type, layer_name(node), "channel-scale",
                f"it reads a float tensor scaled per channel by the activation quantizer "
                f"{f'{who!r} ' if who else ''}(node {quant.name}), a scale streamlining cannot absorb in front of a "
                f"{'regular conv' if node.op_type == 'Conv' else node.op_type + ' node'}: quantize that activation per tensor "
                "(scaling_per_output_channel=False); per-channel scales lower only in front of depthwise convs"))


def _is_depthwise(g: _Graph, node) -> bool:
    from qonnx.util.basic import get_by_name

    group = get_by_name(node.attribute, "group")
    shape = g.shape(node.input[0])
    return group is not None and group.i > 1 and shape is not None and len(shape) == 4 and group.i == shape[1]


def _padded(node) -> bool:
    from qonnx.util.basic import get_by_name

    pads = get_by_name(node.attribute, "pads")
    return pads is not None and any(pads.ints)


def _reads_bipolar(g: _Graph, name: str) -> bool:
    """True when `name` holds bipolar values (a BipolarQuant, through value-moving ops)."""
    p = g.producer.get(name)
    while p is not None and p.op_type in _TRANSPARENT and p.op_type != "Concat":
        p = g.producer.get(p.input[0])
    return p is not None and p.op_type == "BipolarQuant"


def _conv_1d_problem(g: _Graph, node) -> str:
    from onnx import helper

    shape = g.shape(node.input[0])
    if shape is None or len(shape) != 4:
        return ""
    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = g.model.get_initializer(node.input[1])
    kernel = list(attr.get("kernel_shape", list(np.shape(w)[2:]) if w is not None else []))
    pads = list(attr.get("pads", [0, 0, 0, 0]))
    if len(kernel) != 2:
        return ""
    for axis, name in ((0, "height"), (1, "width")):
        if shape[2 + axis] == 1 and (kernel[axis] > 1 or pads[axis] + pads[axis + 2] > 0):
            return (f"a {kernel[0]}x{kernel[1]} conv reads a {shape[2]}x{shape[3]} map: FINN treats a {name} of 1 as "
                    f"a 1-D dummy axis and cannot lower a kernel or padding across it; use a larger input size "
                    f"(at least 2 rows and columns at every 3x3 layer) or a 1x1 conv there")
    return ""


def _check_concat(g: _Graph, node, add) -> None:
    shapes = [g.shape(i) for i in node.input]
    if any(s is not None and len(s) == 4 and s[2] == s[3] == 1 for s in shapes):
        add(node, "concat-shape", "concatenating [N, C, 1, 1] pooled maps does not lower (the Flatten after the "
            "Concat has no FINN hardware layer: partitioning fails); flatten each input and concatenate on the last axis")
        return
    qs = [_quant_scale(g, i) for i in node.input if not g.is_const(i)]
    if len(qs) < 2 or any(q is None for q in qs):
        return
    first = qs[0]
    if not all(all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(first, q)) for q in qs[1:]):
        add(node, "concat-scale", "the inputs of this Concat are quantized with different scales; quantize every "
            "input with the same QuantReLU / QuantIdentity instance")


def _float_input(src, node, default_hint: str) -> "Problem":
    """`src` hands a float tensor to a compute or pooling node that needs integers."""
    hint = _FLOAT_HINTS.get(src.op_type, default_hint)
    return Problem(src.name, src.op_type, layer_name(src), "float-input",
                   f"its float output feeds {node.op_type} {node.name} unquantized: {hint}")
