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
def test_parity_of_300_images_at_64x64_takes_under_two_minutes(tmp_path):
    """The issue's budget: a full per-stage check of >= 300 64x64 images in <= 2 minutes."""
    from compilers.finn import lower

    path, model = exported("ResidualNet", size=64)
    pixels = images(300, 64, seed=1)
    result = lower(path, tmp_path, get_part("zcu104"), target_fps=1000, samples_uint8=pixels,
                   reference_logits=logits(model, pixels), log=lambda s: None)
    seconds = sum(p.seconds for p in result.parity)
    print(f"parity: {len(result.parity)} stages x 300 images in {seconds:.1f} s; "
          f"steps {sum(result.time_per_step.values()):.1f} s")
    assert result.bit_exact
    assert seconds <= 120
