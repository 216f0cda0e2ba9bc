"""EfficientNet-Lite (quant.models.effnet_lite: inverted residuals, depthwise convs, ReLU6
quantizers) through the whole offline FINN flow, bit-exact at every stage: a small one in make
test, the default job's at width 1.0 through the CLI in make test-slow."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_finn_models import images, randomize

from compilers.finn import STEPS, lower
from targets.fpga_parts import get_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64  # the smallest square input keeping 2+ rows at every 3x3 layer (FINN rule conv-1d-map)


def test_small_effnet_lite_lowers_bit_exact_with_depthwise_units(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper

    from quant.export import export_qonnx
    from quant.models import create_model

    torch.manual_seed(0)
    model = randomize(create_model("effnet_lite", 2, (SIZE, SIZE), width=0.25), seed=1).eval()
    path = export_qonnx(model, (SIZE, SIZE), tmp_path / "effnet_lite.onnx")
    pixels = images(32, SIZE, seed=5)
    result = lower(path, tmp_path / "finn", get_part("zcu104"), target_fps=2000, samples_uint8=pixels,
                   reference_logits=None, log=lambda s: None)
    assert [p.stage for p in result.parity] == [s.__name__ for s in STEPS]
    assert result.bit_exact and all(p.n == 32 and p.exact for p in result.parity)
    assert result.notes["streamline"] == "plus"  # the inverted residuals' joins
    kinds = {n.op_type for n in ModelWrapper(str(result.final_model)).graph.node}
    assert "VVAU_hls" in kinds or "VVAU_rtl" in kinds  # depthwise convs became vector-vector units
    assert "ElementwiseAdd_hls" in kinds and "DuplicateStreams_hls" in kinds  # the residuals run in hardware
    assert result.est_fps >= 2000


@pytest.mark.slow
def test_default_job_with_effnet_lite_builds_for_the_fpga_bit_exact(tmp_path, capsys):
    """Issue 16's acceptance: effnet_lite at width 1.0 on the default job's 64x64 images; the
    build (export, FINN flow, parity on the whole test set) takes minutes, not the hour FINN's
    own streamlining alone took (the time is printed, not asserted)."""
    from corpus import run

    from core.layout import FPGA_SUMMARY

    args = ["--set", "model.name=effnet_lite", "--set", "model.width=1.0", "--build-dir", str(tmp_path / "build")]
    assert run(capsys, "train", *args)[0] == 0
    # the default 40,000 fps does not fit the ZCU104 at width 1.0: the build is the best fit, said so
    t0 = time.perf_counter()
    code, err = run(capsys, "build", "--target", "fpga", *args)
    minutes = (time.perf_counter() - t0) / 60
    assert code == 0, err[-3000:]
    summaries = list((tmp_path / "build").rglob(FPGA_SUMMARY))
    assert summaries, list((tmp_path / "build").rglob("*.json"))
    summary = json.loads(summaries[0].read_text())
    assert summary["bit_exact"] and all(stage["exact"] for stage in summary["stages"]), summary["stages"]
    assert summary["target_fps"] == 40000 and summary["est_fps"] < 40000 and "best fit:" in summary["shortfall"]
    assert summary["resources"]["LUT"] <= summary["budget"] * summary["capacity"]["LUT"]
    print(f"effnet_lite w1.0 64x64 fpga build: {minutes:.1f} min")
    assert np.isfinite(minutes)
