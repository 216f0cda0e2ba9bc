"""Batched versions of the FINN/qonnx python-mode ops that only run one sample at a time.

Each kernel reproduces the op's own `execute_node` (same index helpers, same order of
operations) with a leading batch dimension N instead of the hard-coded batch of 1.
A kernel returns False when a node uses a mode it does not cover; the executor then
runs FINN's own implementation once per sample. parity.check_executor compares the
result against FINN's execute_onnx.
"""
from __future__ import annotations

import numpy as np


def im2col(inst, node, ctx, graph) -> bool:
    """qonnx Im2Col.execute_node, batched."""
    k_h, k_w = inst.get_nodeattr("kernel_size")
    stride_h, stride_w = inst.get_nodeattr("stride")
    pad = list(inst.get_nodeattr("pad_amount"))
    pad_val = inst.get_nodeattr("pad_value")
    dil_h, dil_w = inst.get_nodeattr("dilations")
    ctx[node.output[0]] = im2col_nhwc(ctx[node.input[0]], k_h, k_w, stride_h, stride_w, pad, pad_val, dil_h, dil_w)
    return True


def conv_input_generator(inst, node, ctx, graph) -> bool:
    """finn ConvolutionInputGenerator.execute_node (an Im2Col without padding), batched."""
    k = inst.get_nodeattr("ConvKernelDim")
    s = inst.get_nodeattr("Stride")
    d = inst.get_nodeattr("Dilation")
    ctx[node.output[0]] = im2col_nhwc(ctx[node.input[0]], k[0], k[1], s[0], s[1], [0, 0, 0, 0], 0, d[0], d[1])
    return True


def im2col_nhwc(x, k_h, k_w, stride_h, stride_w, pad, pad_val, dil_h, dil_w) -> np.ndarray:
    """qonnx's im2col of x [N, H, W, C]: [N, OH, OW, kh*kw*C], kernel position major.

    The same values in the same order as qonnx's index gather (im2col_indices_nchw),
    taken as one strided view instead of an index gather plus a transposed copy.
    """
    from numpy.lib.stride_tricks import sliding_window_view
    from qonnx.custom_op.general.im2col import compute_conv_output_dim as out_dim

    n, h, w, c = x.shape
    out_h = out_dim(h, k_h, stride_h, pad[0] + pad[2], dil_h)
    out_w = out_dim(w, k_w, stride_w, pad[1] + pad[3], dil_w)
    xp = np.pad(x, ((0, 0), (pad[0], pad[2]), (pad[1], pad[3]), (0, 0)), mode="constant", constant_values=pad_val)
    span_h, span_w = dil_h * (k_h - 1) + 1, dil_w * (k_w - 1) + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(1, 2))  # [N, H', W', C, span_h, span_w]
    win = win[:, ::stride_h, ::stride_w, :, ::dil_h, ::dil_w][:, :out_h, :out_w]  # [N, OH, OW, C, kh, kw]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(n, out_h, out_w, k_h * k_w * c)


def mvau(inst, node, ctx, graph) -> bool:
    """finn MVAU.execute_node (integer, non-binary modes), batched."""
    from qonnx.custom_op.general.multithreshold import multithreshold

    if inst.get_nodeattr("binaryXnorMode") or inst.get_nodeattr("inputDataType") == "BIPOLAR":
        return False
    x = ctx[node.input[0]]
    n = x.shape[0]
    x = x.reshape([n] + list(inst.get_normal_input_shape())[1:])
    result = np.matmul(x, ctx[node.input[1]])
    if inst.get_nodeattr("noActivation") == 0:
        bipolar = inst.get_nodeattr("outputDataType") == "BIPOLAR"
        out_scale, out_bias = (2, -1) if bipolar else (1, inst.get_nodeattr("ActVal"))
        if result.ndim == 4:
            result = result.transpose((0, 3, 1, 2))
        result = multithreshold(result, ctx[node.input[2]], out_scale, out_bias)
        if result.ndim == 4:
            result = result.transpose((0, 2, 3, 1))
    ctx[node.output[0]] = result.reshape([n] + list(inst.get_normal_output_shape())[1:])
    return True


def vvau(inst, node, ctx, graph) -> bool:
    """finn VVAU.execute_node (integer, non-bipolar modes), batched."""
    from qonnx.custom_op.general.multithreshold import multithreshold

    if inst.get_nodeattr("inputDataType") == "BIPOLAR" and inst.get_nodeattr("weightDataType") == "BIPOLAR":
        return False
    x = ctx[node.input[0]]
    n, dim_h, dim_w, _ = x.shape
    k_h, k_w = inst.get_nodeattr("Kernel")
    channels = inst.get_nodeattr("Channels")
    producer = [p for p in graph.node if p.output[0] == node.input[0]]
    if producer and producer[0].op_type in ("Im2Col", "ConvolutionInputGenerator"):
        pe = channels
    else:
        pe = inst.get_nodeattr("PE")
    # the SWG interleaves PE: untangle as FINN does
    x = x.reshape(n, dim_h, dim_w, channels // pe, k_h * k_w, pe).transpose(0, 1, 2, 4, 3, 5)
    result = _depthwise_exact(inst, x.reshape(n, dim_h, dim_w, k_h * k_w, channels), ctx[node.input[1]])
    if result is None:
        x = x.reshape(n, dim_h, dim_w, channels * k_h * k_w)
        w = inst._infer_sparse_weight_tensor(ctx[node.input[1]], k_h, k_w, channels)
        result = np.matmul(x, w)
    if inst.get_nodeattr("noActivation") == 0:
        bipolar = inst.get_nodeattr("outputDataType") == "BIPOLAR"
        out_scale, out_bias = (2, -1) if bipolar else (1, inst.get_nodeattr("ActVal"))
        result = multithreshold(result.transpose((0, 3, 1, 2)), ctx[node.input[2]], out_scale, out_bias)
        result = result.transpose((0, 2, 3, 1))
    ctx[node.output[0]] = result
    return True


EXACT_FLOAT32 = 2**24  # integers below this are exact in float32, and so are all sums that stay below it


def _depthwise_exact(inst, x, w_conv):
    """VVAU's product without its sparse [k*k*C, C] matrix: per channel, the k*k window
    values times that channel's k*k weights, summed. x: [N, H, W, k*k, C] (FINN's order).

    FINN's float32 matmul against the sparse matrix adds the same k*k products and zeros.
    With integer values and every partial sum below 2**24 both sums are exact, so they are
    equal whatever the order; otherwise None (the caller takes FINN's matmul).
    """
    from qonnx.core.datatype import DataType

    if not all(DataType[inst.get_nodeattr(a)].is_integer() for a in ("inputDataType", "weightDataType")):
        return None
    channels = w_conv.shape[0]
    w = np.asarray(w_conv, dtype=np.float32).reshape(channels, -1).T  # [k*k, C]
    x = x.astype(np.float32, copy=False)
    if x.size == 0 or float(np.abs(x).max()) * float(np.abs(w).sum(axis=0).max()) >= EXACT_FLOAT32:
        return None
    if not (np.array_equal(x, np.round(x)) and np.array_equal(w, np.round(w))):
        return None
    return np.einsum("nhwkc,kc->nhwc", x, w)


def duplicate_streams(inst, node, ctx, graph) -> bool:
    """finn DuplicateStreams.execute_node, batched: every output is the input."""
    x = ctx[node.input[0]]
    out = np.asarray(x, dtype=np.float32).reshape([x.shape[0]] + list(inst.get_normal_input_shape())[1:])
    for o in node.output:
        ctx[o] = out
    return True


KERNELS = {
    "Im2Col": im2col,
    "ConvolutionInputGenerator": conv_input_generator,
    "MVAU": mvau,
    "VVAU": vvau,
    "DuplicateStreams": duplicate_streams,
}
