"""compilers.finn.parity / execute: metrics, the batched executor's self-check, timing."""
from __future__ import annotations


import numpy as np
import pytest
from test_finn_models import exported, images, logits

from compilers.finn import steps as S
from compilers.finn.env import finn_build_dir
from compilers.finn.flow import run_steps
from compilers.finn.parity import Stage, check_stages
from core.compare import compare
from targets.fpga_parts import get_part


def test_compare_metrics():
    ref = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    same = ref + np.array([[0, 1e-7, 0], [0, 0, 0], [0, 0, 0]], np.float32)  # breaks the tie in row 0
    m = compare(same, ref)
    assert m["exact"] and m["argmax_agreement"] == 1.0  # a reference tie counts as agreement
    flipped = ref.copy()
    flipped[1] = [0.0, 1.0, 1.5]
    m = compare(flipped, ref)
    assert not m["exact"] and m["argmax_agreement"] == pytest.approx(2 / 3)
    assert m["max_abs_diff"] == pytest.approx(1.0) and m["max_abs_diff_rel"] == pytest.approx(1 / 3)
    assert m["worst_sample"] == 1


def test_batched_im2col_equals_qonnx_per_sample():
    """The strided-view im2col gives qonnx's values and order for pads, strides, dilations."""
    import itertools

    from qonnx.custom_op.general.im2col import compute_conv_output_dim as out_dim
    from qonnx.custom_op.general.im2col import im2col_indices_nchw

    from compilers.finn.kernels import im2col_nhwc

    rng = np.random.default_rng(0)
    cases = 0
    for h, w, c, kh, kw, s, p, d in itertools.product([1, 5, 8], [5, 8], [1, 3], [1, 3], [1, 3], [1, 2], [0, 1], [1, 2]):
        pad = [p if h > 1 else 0, p, p if h > 1 else 0, p]
        if (h == 1 and kh != 1) or out_dim(h, kh, s, pad[0] + pad[2], d) < 1 or out_dim(w, kw, s, 2 * p, d) < 1:
            continue
        x = rng.integers(-8, 8, (3, h, w, c)).astype(np.float32)
        got = im2col_nhwc(x, kh, kw, s, s, pad, 0, d, d)
        oh, ow = out_dim(h, kh, s, pad[0] + pad[2], d), out_dim(w, kw, s, 2 * p, d)
        for i in range(3):
            ref = im2col_indices_nchw(x[i : i + 1].transpose(0, 3, 1, 2), h, w, kh, kw, pad, s, s, 0, d, d)
            ref = ref.reshape(1, c, kh, kw, oh, ow).transpose(0, 4, 5, 2, 3, 1).reshape(1, oh, ow, kh * kw * c)
            assert np.array_equal(got[i : i + 1], ref), (h, w, c, kh, kw, s, p, d)
        cases += 1
    assert cases > 100


@pytest.mark.parametrize("after_swg, act_bits, wide", [(True, 4, False), (False, 4, False), (True, 8, True)])
def test_batched_vvau_equals_finn_per_sample(after_swg, act_bits, wide):
    """The batched depthwise VVAU (no sparse matrix) gives FINN's execute_node values, with the
    window from a sliding window (PE untangled as Channels) or from elsewhere (PE interleaved);
    `wide`: values whose sums leave float32's exact range take FINN's matmul instead."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from compilers.finn import kernels as K
    from compilers.finn.env import ensure_finn

    ensure_finn()
    c, k, h, pe = 6, 3, 4, 2
    rng = np.random.default_rng(act_bits)
    wmax = 2 ** 15 if wide else 8
    inputs = ["x", "w"] + ([] if wide else ["t"])
    attrs = dict(PE=pe, Dim=[h, h], Channels=c, Kernel=[k, k], inputDataType=f"UINT{act_bits}",
                 weightDataType="INT16" if wide else "INT4", outputDataType="UINT4" if not wide else "INT32",
                 ActVal=0, noActivation=int(wide))
    vvau = helper.make_node("VVAU", inputs, ["y"], domain="finn.custom_op.fpgadataflow", name="VVAU_0", **attrs)
    nodes = [vvau]
    if after_swg:  # the VVAU reads a sliding window's output
        swg = helper.make_node("ConvolutionInputGenerator", ["x0"], ["x"], domain="finn.custom_op.fpgadataflow",
                               name="SWG_0", ConvKernelDim=[k, k], IFMChannels=c, IFMDim=[h + 2, h + 2],
                               OFMDim=[h, h], SIMD=c, Stride=[1, 1], Dilation=[1, 1], inputDataType=f"UINT{act_bits}",
                               outputDataType=f"UINT{act_bits}")
        nodes.insert(0, swg)
    graph = helper.make_graph(nodes, "vvau", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, h, h, k * k * c])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, h, h, c])])
    model = ModelWrapper(helper.make_model(graph))
    w = rng.integers(-wmax, wmax, (c, 1, k, k)).astype(np.float32)
    model.set_initializer("w", w)
    if not wide:
        model.set_initializer("t", np.sort(rng.integers(-200, 200, (c, 15)), axis=1).astype(np.float32))
    x = rng.integers(0, 2 ** act_bits, (3, h, h, k * k * c)).astype(np.float32)
    inst = getCustomOp(vvau)
    ctx = {"x": x, "w": w, "t": model.get_initializer("t")}
    assert K.vvau(inst, vvau, ctx, model.graph)
    assert (K._depthwise_exact(inst, x.reshape(3, h, h, k * k, c), w) is None) == wide
    for i in range(3):
        one = {"x": x[i : i + 1], "w": w, "t": ctx["t"], "y": None}
        inst.execute_node(one, model.graph)
        assert np.array_equal(ctx["y"][i : i + 1], one["y"]), i


@pytest.fixture(scope="module")
def plain_stages(tmp_path_factory):
    """PlainCNN through convert_to_hw (MVAU, ConvolutionInputGenerator, Pool nodes)."""
    from qonnx.core.modelwrapper import ModelWrapper

    path, model = exported("PlainCNN", size=16)
    out = tmp_path_factory.mktemp("plain_hw")
    cfg = S.FlowConfig(out, get_part("zcu104"), 200.0, 1000.0, 0.7)
    steps = [S.preprocess, S.fix_avgpool_trunc, S.qonnx_to_finn, S.tidy_up, S.streamline, S.convert_to_hw]
    with finn_build_dir(out / "finn_tmp"):
        run_steps(ModelWrapper(str(path)), cfg, steps, log=lambda s: None)
    pixels = images(24, 16, seed=11)
    return Stage("convert_to_hw", out / "intermediate_models" / "convert_to_hw.onnx"), pixels, logits(model, pixels)


def test_batched_executor_is_checked_against_finn(plain_stages, monkeypatch):
    """A wrong batched kernel is caught by the cross-check; the stage then runs FINN's own code."""
    import compilers.finn.kernels as K

    stage, pixels, reference = plain_stages
    (ok,) = check_stages([stage], pixels, reference)
    assert ok.exact and ok.executor == "batched" and ok.executor_check <= 1e-6

    def broken_mvau(inst, node, ctx, graph):
        assert K.mvau(inst, node, ctx, graph)
        ctx[node.output[0]] = ctx[node.output[0]] + 1.0
        return True

    monkeypatch.setitem(K.KERNELS, "MVAU", broken_mvau)
    (fallback,) = check_stages([stage], pixels, reference)
    assert fallback.executor == "per-sample" and fallback.executor_check > 1e-3
    assert fallback.exact and fallback.argmax_agreement == 1.0


@pytest.mark.slow
def test_parity_of_300_images_at_64x64(tmp_path):
    """A full per-stage check of 300 64x64 images is bit-exact (the time is printed; make bench measures it)."""
    from compilers.finn import lower

    path, model = exported("ResidualNet", size=64)
    pixels = images(300, 64, seed=1)
    result = lower(path, tmp_path, get_part("zcu104"), target_fps=1000, samples_uint8=pixels,
                   reference_logits=logits(model, pixels), log=lambda s: None)
    seconds = sum(p.seconds for p in result.parity)
    print(f"parity: {len(result.parity)} stages x 300 images in {seconds:.1f} s; "
          f"steps {sum(result.time_per_step.values()):.1f} s")
    assert result.bit_exact
