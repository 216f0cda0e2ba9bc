"""A truncating average pool with a non-square window, and its lowering to FINN's Pool layer.

finn-plus converts Brevitas' TruncAvgPool2d (AveragePool -> Trunc in QONNX) only for
square kernels: its intermediate op qonnx QuantAvgPool2d has one integer `kernel`, and
AvgPoolAndTruncv2ToQuantAvgPool raises "FINN only supports average pooling with 2D
square kernels." The hardware below it does not care: Im2Col / ConvolutionInputGenerator
take [kh, kw] windows and FINN's Pool layer (Function "QuantAvgPool": window sum, right
shift) takes KernelSize [kh, kw]. So for a non-square window (e.g. the global pool over
a 4x10 map of a 32x80 input):

- `fix_avgpool_trunc` (compilers/finn/steps.py) rewrites AveragePool -> Trunc into
  Div(input scale) -> QuantAvgPool2dRect -> Mul(output scale), the same shape of graph
  FINN makes for a square window, so streamlining treats it the same way;
- `InferRectQuantAvgPool` (run first in the convert_to_hw step) turns QuantAvgPool2dRect
  into Transpose -> Im2Col -> Pool -> Transpose, exactly what FINN's InferPool makes of a
  square QuantAvgPool2d; FINN's own convert_to_hw then maps Im2Col to a
  ConvolutionInputGenerator.

QuantAvgPool2dRect computes floor(window_sum(x) / 2^shift) on integer x, which is what
qonnx's Trunc (v2) computes on the AveragePool output when no clamping occurs (checked
when the node is made: the largest window sum, shifted, fits the output bits).

The op lives in this module's ONNX domain; qonnx's registry imports the domain as a
module, so any process with this package on its path executes it.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.custom_op.base import CustomOp
from qonnx.transformation.base import Transformation

DOMAIN = "compilers.finn.custom_ops"


class QuantAvgPool2dRect(CustomOp):
    """floor(sum over a [kh, kw] window / 2^shift) of an integer NCHW tensor (no padding)."""

    def get_nodeattr_types(self):
        return {
            "kernel": ("ints", True, [1, 1]),
            "stride": ("ints", True, [1, 1]),
            "shift": ("i", True, 0),
            "ibits": ("i", True, 1),  # input bits (accumulator width is derived from them)
            "obits": ("i", True, 1),
            "signed": ("i", True, 0, {0, 1}),
            "data_layout": ("s", False, "NCHW", {"NCHW"}),
        }

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("AveragePool", [node.input[0]], [node.output[0]],
                                kernel_shape=list(self.get_nodeattr("kernel")),
                                strides=list(self.get_nodeattr("stride")))

    def infer_node_datatype(self, model):
        bits = self.get_nodeattr("obits")
        model.set_tensor_datatype(self.onnx_node.output[0],
                                  DataType[f"{'INT' if self.get_nodeattr('signed') else 'UINT'}{bits}"])

    def get_accum_size(self) -> int:
        """Bits of the window sum (what FINN's Pool layer takes as AccumBits)."""
        kh, kw = self.get_nodeattr("kernel")
        ibits = self.get_nodeattr("ibits")
        if self.get_nodeattr("signed"):
            return int(2 ** (ibits - 1) * kh * kw).bit_length() + 1
        return int((2**ibits - 1) * kh * kw).bit_length()

    def execute_node(self, context, graph):
        node = self.onnx_node
        x = np.asarray(context[node.input[0]], dtype=np.float64)
        kh, kw = self.get_nodeattr("kernel")
        sh, sw = self.get_nodeattr("stride")
        n, c, h, w = x.shape
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        out = np.empty((n, c, oh, ow), dtype=np.float64)
        for i in range(oh):
            for j in range(ow):
                out[:, :, i, j] = x[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].sum(axis=(2, 3))
        out = np.floor(np.round(out) / 2.0 ** self.get_nodeattr("shift"))
        context[node.output[0]] = out.astype(np.float32)

    def verify_node(self):
        return []


custom_op = {"QuantAvgPool2dRect": QuantAvgPool2dRect}


class InferRectQuantAvgPool(Transformation):
    """QuantAvgPool2dRect (NCHW) -> Transpose -> Im2Col -> Pool(QuantAvgPool) -> Transpose."""

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp
        from qonnx.transformation.infer_datatypes import InferDataTypes
        from qonnx.transformation.infer_shapes import InferShapes

        g = model.graph
        changed = False
        for idx, node in enumerate(list(g.node)):
            if node.op_type != "QuantAvgPool2dRect" or node.domain != DOMAIN:
                continue
            inst = getCustomOp(node)
            idt = model.get_tensor_datatype(node.input[0])
            odt = model.get_tensor_datatype(node.output[0])
            if not idt.is_integer():
                continue  # FINN's partitioning reports it as a host op
            _, ch, ih, iw = model.get_tensor_shape(node.input[0])
            _, _, oh, ow = model.get_tensor_shape(node.output[0])
            kh, kw = inst.get_nodeattr("kernel")
            sh, sw = inst.get_nodeattr("stride")

            def tensor(shape, dtype=None):
                name = model.make_new_valueinfo_name()
                g.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
                if dtype is not None:
                    model.set_tensor_datatype(name, dtype)
                return name

            nhwc_in = tensor((1, ih, iw, ch), idt)
            cols = tensor((1, oh, ow, ch * kh * kw), idt)
            nhwc_out = tensor((1, oh, ow, ch))
            new = [
                helper.make_node("Transpose", [node.input[0]], [nhwc_in], perm=[0, 2, 3, 1]),
                helper.make_node("Im2Col", [nhwc_in], [cols], domain="qonnx.custom_op.general", stride=[sh, sw],
                                 kernel_size=[kh, kw], pad_amount=[0, 0, 0, 0], pad_value=0, depthwise=1,
                                 input_shape=f"(1,{ih},{iw},{ch})", name="Im2Col_" + node.name),
                helper.make_node("Pool", [cols], [nhwc_out], domain="finn.custom_op.fpgadataflow",
                                 backend="fpgadataflow", InputDataType=idt.name, OutputDataType=odt.name,
                                 Channels=ch, PE=ch, KernelSize=[kh, kw], Function="QuantAvgPool",
                                 OutImgDims=[oh, ow], AccumBits=inst.get_accum_size(),
                                 Size=inst.get_nodeattr("shift"), BatchSize=1, cpp_interface="hls_vector",
                                 name="Pool_" + node.name),
                helper.make_node("Transpose", [nhwc_out], [node.output[0]], perm=[0, 3, 1, 2]),
            ]
            pos = list(g.node).index(node)
            g.node.remove(node)
            for k, n in enumerate(new):
                g.node.insert(pos + k, n)
            changed = True
        if changed:
            model = model.transform(InferShapes()).transform(InferDataTypes())
        return model, False


def needs_rect(pool) -> bool:
    """True for an AveragePool FINN's own conversion rejects for its window shape:
    a non-square kernel, or unequal strides (AvgPoolAndTruncv2ToQuantAvgPool)."""
    attr = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
    k = list(attr.get("kernel_shape", []))
    s = list(attr.get("strides", k))
    return len(k) == 2 and (k[0] != k[1] or len(s) != 2 or s[0] != s[1])


def _trunc_params(model, pool, trunc):
    """(params dict, None) for an AveragePool -> Trunc (v2) pair this module converts
    exactly, else (None, reason)."""
    from qonnx.util.basic import get_by_name

    attr = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
    kh, kw = attr["kernel_shape"]
    sh, sw = attr.get("strides", [kh, kw])
    if any(attr.get("pads", [0, 0, 0, 0])):
        return None, "padded average pools do not lower (use padding=0)"
    if len(trunc.input) != 6:
        return None, "Trunc v1 (no output scale) is not supported; export with brevitas >= 0.11"
    vals = [model.get_initializer(i) for i in trunc.input[1:6]]
    if any(v is None or np.size(v) != 1 for v in vals):
        return None, "the Trunc's scale, zero point and bit widths must be scalar constants"
    scale, zeropt, in_bits, out_scale, out_bits = (float(np.asarray(v, dtype=np.float64).reshape(())) for v in vals)
    mode = get_by_name(trunc.attribute, "rounding_mode")
    if mode is None or mode.s.upper() != b"FLOOR":
        return None, "the pool must truncate with FLOOR rounding: use trunc_quant=TruncTo8bit (not RoundTo8bit)"
    if zeropt != 0:
        return None, "the Trunc's zero point must be 0"
    signed_attr = get_by_name(trunc.attribute, "signed")
    if signed_attr is not None and signed_attr.i:
        return None, "a non-square pool of signed values does not lower: pool right after a QuantReLU"
    shift = int(round(np.log2(out_scale / scale)))
    if not np.isclose(out_scale / scale, 2.0**shift):
        return None, f"the Trunc's output/input scale ratio {out_scale / scale:g} is not a power of two"
    if shift < 0:
        if out_bits > in_bits:  # a widening Trunc: fix_avgpool_trunc makes it exact (shift 0) first
            shift, out_bits = 0, in_bits
        else:
            return None, f"the Trunc shifts left by {-shift} bits, which FINN's pool does not do"
    ibits = max(1, int(in_bits) - int(kh * kw - 1).bit_length())  # the input's bits, as Brevitas counts them
    if ((2**ibits - 1) * kh * kw) >> shift > 2 ** int(out_bits) - 1:
        return None, (f"the window sum >> {shift} can exceed {int(out_bits)} bits (Trunc would clamp, "
                      "FINN's pool would wrap)")
    return dict(kernel=[kh, kw], stride=[sh, sw], shift=shift, ibits=ibits, obits=int(out_bits), signed=0,
                in_scale=scale * kh * kw, out_scale=out_scale), None


def rect_pool_problem(model, pool, trunc) -> str | None:
    """Why `pool` -> `trunc` cannot be converted exactly (a one-line reason), or None."""
    return _trunc_params(model, pool, trunc)[1]


def rect_pool_node(model, pool, trunc):
    """Replace AveragePool `pool` -> Trunc (v2) `trunc` by Div -> QuantAvgPool2dRect -> Mul, in place.

    Returns a reason string when the pattern is not one this can convert exactly, else None.
    """
    p, why = _trunc_params(model, pool, trunc)
    if why is not None:
        return why
    g = model.graph
    ints = model.make_new_valueinfo_name()
    pooled = model.make_new_valueinfo_name()
    div_c, mul_c = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
    model.set_initializer(div_c, np.asarray(p["in_scale"], dtype=np.float64))  # the input's own scale
    model.set_initializer(mul_c, np.asarray(p["out_scale"], dtype=np.float64))
    pos = list(g.node).index(pool)
    nodes = [
        helper.make_node("Div", [pool.input[0], div_c], [ints], name=pool.name + "_div"),
        helper.make_node("QuantAvgPool2dRect", [ints], [pooled], domain=DOMAIN, name=pool.name + "_rect",
                         kernel=p["kernel"], stride=p["stride"], shift=p["shift"], ibits=p["ibits"],
                         obits=p["obits"], signed=p["signed"], data_layout="NCHW"),
        helper.make_node("Mul", [pooled, mul_c], [trunc.output[0]], name=trunc.name + "_mul"),
    ]
    g.node.remove(pool)
    g.node.remove(trunc)
    for k, n in enumerate(nodes):
        g.node.insert(pos + k, n)
    return None


class OutputMarker(CustomOp):
    """Identity that stands for a graph output while FINN streamlines (steps.hold_outputs).

    FINN's MoveOpPastFork asserts when a forked tensor is also a graph output; with this
    node as the output's only reader the fork is an ordinary one. Never left in a saved
    stage model."""

    def get_nodeattr_types(self):
        return {}

    def make_shape_compatible_op(self, model):
        node = self.onnx_node
        return helper.make_node("Identity", [node.input[0]], [node.output[0]])

    def infer_node_datatype(self, model):
        node = self.onnx_node
        model.set_tensor_datatype(node.output[0], model.get_tensor_datatype(node.input[0]))

    def execute_node(self, context, graph):
        node = self.onnx_node
        context[node.output[0]] = context[node.input[0]]

    def verify_node(self):
        return []


custom_op["OutputMarker"] = OutputMarker
