"""Float32 rounding ties: found where planted, used to explain FPGA differences, and the
gate accepts them only when the recipe says so and only when every difference is a tie."""
import numpy as np
import pytest
import torch
from torch import nn

from qdeploy.recipe import GateConfig
from reference.gates import evaluate_gates
from reference.rounding_ties import TIE_MARGIN, explain_differences, tie_margins


class PixelOverTen(nn.Module):
    """uint8 pixel p -> a 4-bit QuantReLU with scale 1 over p / 10 (so p = 25 sits on 2.5)."""

    def __init__(self):
        super().__init__()
        import brevitas.nn as qnn
        from brevitas.core.scaling import ScalingImplType
        from brevitas.quant import Uint8ActPerTensorFloatMaxInit

        self.act = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloatMaxInit, bit_width=4, max_val=15.0,
                                 scaling_impl_type=ScalingImplType.CONST, return_quant_tensor=True)

    def forward(self, x):
        return self.act(x.flatten(1) * 25.5).value


@pytest.fixture
def model():
    return PixelOverTen().eval()


def test_margins_find_a_planted_tie_and_ignore_clamped_values(model):
    pixels = np.array([25, 23, 205, 0], dtype=np.uint8).reshape(4, 1, 1, 1)
    m = tie_margins(model, pixels, batch_size=3)
    assert m[0] < TIE_MARGIN  # 2.5: on the boundary, up to float32 rounding
    assert m[1] == pytest.approx(0.2 / 2.3, rel=1e-5)
    assert m[2] == pytest.approx(0.5 / 15)  # 20.5 clamps to 15: no tie
    assert m[3] == pytest.approx(0.5)


def test_differences_are_explained_only_on_images_with_a_tie(model):
    pixels = np.array([25, 23, 40], dtype=np.uint8).reshape(3, 1, 1, 1)
    reference = np.array([[2.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    logits = reference + np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # images 0 and 1 differ
    e = explain_differences(model, pixels, logits, reference, 1e-6)
    assert (e["n"], e["n_differing"], e["n_ties"]) == (3, 2, 1)
    assert e["differing"] == [0, 1] and e["unexplained"] == [1]
    assert e["max_abs_diff_rel_unexplained"] == pytest.approx(0.25)


def _fpga(ties):
    ag = {"argmax_agreement": 1.0, "max_abs_diff_rel": 0.0015, "n": 360}
    return {"fpga": {"role": "target", "target": "fpga", "agreement_reference": ag, "reference": "qat",
                     "metrics": {}, "extra": {"float32_ties": ties}}}


def test_the_gate_accepts_ties_only_when_asked_and_only_ties():
    all_ties = {"n": 360, "n_differing": 18, "n_ties": 18, "max_abs_diff_rel_unexplained": 0.0}
    strict = evaluate_gates(_fpga(all_ties), GateConfig())
    assert not strict[0]["passed"] and "18 of them at float32 rounding ties" in strict[0]["message"]
    allowed = evaluate_gates(_fpga(all_ties), GateConfig(fpga_allow_float32_ties=True))
    assert allowed[0]["gate"] == "bit_exact_except_float32_ties" and all(g["passed"] for g in allowed)
    one_real = {**all_ties, "n_ties": 17, "max_abs_diff_rel_unexplained": 0.0015}
    assert not evaluate_gates(_fpga(one_real), GateConfig(fpga_allow_float32_ties=True))[0]["passed"]


def test_the_report_names_the_images_that_differ_at_ties():
    from reference.render import build_blocks, to_markdown

    ties = {"n": 360, "n_differing": 2, "n_ties": 1, "tie_margin": TIE_MARGIN, "differing": [9, 13],
            "unexplained": [13], "max_abs_diff_rel_unexplained": 0.001}
    models = _fpga(ties)
    models["fpga"].update(label="FPGA target", runtime="finn python exec", device="cpu", precision="w4a4 integer")
    md = to_markdown(build_blocks({"models": models}, {}))
    assert "2 of 360 test images differ from the QAT model; 1 of them" in md
    assert "#9, #13" in md and "not at a tie: #13" in md


def test_a_difference_that_is_all_ties_blames_no_node():
    all_ties = {"n": 360, "n_differing": 18, "n_ties": 18, "max_abs_diff_rel_unexplained": 0.0, "unexplained": []}
    models = _fpga(all_ties)
    models["fpga"]["extra"]["first_divergent_node"] = "MVAU_0 in stage preprocess"
    for cfg in (GateConfig(), GateConfig(fpga_allow_float32_ties=True)):
        assert "MVAU_0" not in evaluate_gates(models, cfg)[0]["message"]
    models["fpga"]["extra"]["float32_ties"] = {**all_ties, "n_ties": 17, "unexplained": [5]}
    assert "MVAU_0" in evaluate_gates(models, GateConfig())[0]["message"]
