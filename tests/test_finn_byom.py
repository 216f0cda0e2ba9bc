"""Bring your own model: `lower` on user QONNX graphs, the QONNX graph itself as the reference."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_finn_models import exported, images, logits

from compilers.finn import lower
from compilers.finn import steps as S
from compilers.finn.env import finn_build_dir
from compilers.finn.flow import qonnx_reference, run_steps
from compilers.finn.parity import Stage, check_stages
from core.errors import UserError
from targets.fpga_parts import get_part

SIZE = 16


def _lower(name, tmp_path, n=32, **kw):
    path, model = exported(name, size=SIZE)
    pixels = images(n, SIZE, seed=7)
    result = lower(path, tmp_path / name, get_part("zcu104"), target_fps=1000, samples_uint8=pixels,
                   reference_logits=None, log=lambda s: None, **kw)
    return result, model, pixels


def test_plain_cnn_with_maxpool_and_folding_plugin(tmp_path):
    """A plain CNN with MaxPool, folded by compilers.finn.folding instead of FINN's SetFolding."""
    from compilers.finn.folding import fold

    result, model, pixels = _lower("PlainCNN", tmp_path, folding=fold)
    assert result.bit_exact and all(p.argmax_agreement == 1.0 for p in result.parity)
    # the qonnx reference is the Brevitas model's output (float rounding apart)
    from qonnx.core.modelwrapper import ModelWrapper

    ref = qonnx_reference(ModelWrapper(str(exported("PlainCNN", size=SIZE)[0])), pixels)
    assert np.max(np.abs(ref - logits(model, pixels))) <= 1e-5 * np.max(np.abs(ref))
    assert result.notes["streamline"] == "finn" and result.notes["folding"]["method"] == "fold"
    assert result.est_fps == pytest.approx(result.notes["folding"]["plugin_est_fps"], rel=1e-6)
    assert result.notes["widening_truncs_fixed"]  # 2x2 pool of 4-bit values into an 8-bit Trunc
    ops = {n.split(" ")[1] for n in result.host_ops}
    assert ops <= {"(Transpose)"}  # only the NCHW -> NHWC input transpose stays on the host


def test_a_flow_resumed_past_the_folding_plugin_keeps_its_plan(tmp_path):
    """The plugin's plan lives in the flow's notes (flow_state.json): a flow interrupted after
    its folding step resumes without calling the plugin again and still reports the plan."""
    from compilers.finn.flow import FLOW_STATE
    from compilers.finn.folding import fold

    first, _, _ = _lower("PlainCNN", tmp_path, folding=fold)
    plan = first.notes["folding"]["plan"]
    assert plan["est_fps"] == pytest.approx(first.notes["folding"]["plugin_est_fps"]) and plan["per_layer"]
    state_path = first.out_dir / FLOW_STATE
    state = json.loads(state_path.read_text())
    cut = state["done"].index("minimize_bit_width")
    state["done"] = state["done"][:cut]  # as if killed during minimize_bit_width
    state_path.write_text(json.dumps(state))
    calls = []

    def counted(*args):
        calls.append(args)
        return fold(*args)

    counted.__qualname__ = fold.__qualname__  # the same folding: the same flow key
    again, _, _ = _lower("PlainCNN", tmp_path, folding=counted)
    assert not calls and again.bit_exact
    assert again.notes["folding"]["plan"] == plan and again.est_fps == first.est_fps


def test_mobilenet_v1_depthwise_separable(tmp_path):
    result, _, _ = _lower("MobileNetV1", tmp_path)
    assert result.bit_exact
    from qonnx.core.modelwrapper import ModelWrapper

    kinds = {n.op_type for n in ModelWrapper(str(result.final_model)).graph.node}
    assert "VVAU_hls" in kinds  # depthwise convolutions became vector-vector units
    assert json.loads((result.out_dir / "report" / "estimate_network_performance.json").read_text())


def test_finn_widening_trunc_bug_and_its_fix(tmp_path):
    """Without fix_avgpool_trunc FINN's AvgPool+Trunc conversion scales the pool by 1/4;
    parity catches it and localizes it to the scale Mul FINN inserted."""
    from qonnx.core.modelwrapper import ModelWrapper

    path, model = exported("PlainCNN", size=SIZE)
    pixels = images(16, SIZE, seed=9)
    out = tmp_path / "nofix"
    cfg = S.FlowConfig(out, get_part("zcu104"), 200.0, 1000.0, 0.7)
    with finn_build_dir(out / "finn_tmp"):
        run_steps(ModelWrapper(str(path)), cfg, [S.preprocess, S.qonnx_to_finn], log=lambda s: None)
    stages = [Stage(n, out / "intermediate_models" / f"{n}.onnx") for n in ("preprocess", "qonnx_to_finn")]
    good, bad = check_stages(stages, pixels, logits(model, pixels))
    assert good.exact and not bad.exact
    div = bad.first_divergence
    assert div["op_type"] == "Mul" and div["factor"] == pytest.approx(0.25)
    assert div["tensor"] == "Trunc_0_out0"  # the Trunc's output, now computed by FINN's scale Mul


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(samples_uint8=np.zeros((4, 1, 16, 16), np.float32)), "uint8"),
        (dict(samples_uint8=np.zeros((4, 1, 32, 32), np.uint8)), r"\[N, 1, 16, 16\]"),
        (dict(samples_uint8=np.zeros((4, 1, 16, 16), np.uint8), reference_logits=np.zeros((3, 3))), "one row per"),
        (dict(budget=1.5), "budget"),
    ],
)
def test_user_mistakes_fail_before_the_flow(tmp_path, kwargs, match):
    path, _ = exported("PlainCNN", size=SIZE)
    with pytest.raises(UserError, match=match):
        lower(path, tmp_path, get_part("zcu104"), log=lambda s: None, **kwargs)
    assert not (tmp_path / "intermediate_models").exists()


def test_missing_or_unlowerable_model(tmp_path):
    with pytest.raises(UserError, match="not found"):
        lower(tmp_path / "nope.onnx", tmp_path / "out", get_part("zcu104"))
    path, _ = exported("SiLUNet", size=SIZE)
    with pytest.raises(UserError, match=r"node Sigmoid_0.*\[activation\]"):
        lower(path, tmp_path / "out", get_part("zcu104"))


@pytest.mark.slow
def test_quant_models_resnet8_lowers_bit_exact(tmp_path):
    """The project's own resnet8 (quant.models, exported by quant.export) at 64x64."""
    import torch

    from quant.export import export_qonnx
    from quant.models import create_model
    from quant.preprocess import to_input
    from compilers.finn.folding import fold

    torch.manual_seed(0)
    model = create_model("resnet8", 2, (64, 64))
    pixels = images(100, 64, seed=3)
    model.train()
    with torch.no_grad():
        model(to_input(pixels[:32]))
    model.eval()
    with torch.no_grad():
        reference = model(to_input(pixels)).numpy()
    path = export_qonnx(model, (64, 64), tmp_path / "resnet8.onnx")
    result = lower(path, tmp_path / "fpga", get_part("zcu104"), target_fps=20000, samples_uint8=pixels,
                   reference_logits=reference, folding=fold, log=lambda s: None)
    assert result.bit_exact and result.est_fps >= 20000
    assert result.budget_use["LUT"] <= 1.0
