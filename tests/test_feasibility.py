"""targets.feasibility.best_feasible_fps: the fps bound from the model config alone, and
FINN's estimate of the fastest folding that fits."""
from __future__ import annotations

import pytest

from core.errors import UserError
from targets.feasibility import best_feasible_fps, min_cycles_per_layer


def test_analytic_bound_is_the_stem_pixel_rate():
    r = best_feasible_fps({"name": "resnet8", "in_size": (32, 80), "width": 0.25}, "zcu104")
    assert r.clock_mhz == 200.0 and r.pixel_rate_fps == pytest.approx(200e6 / (32 * 80))
    # FINN's fully parallel stem ConvolutionInputGenerator_rtl: (32+2)*(80+2) + 2 cycles
    assert r.analytic_bottleneck.startswith("stem.0") and r.analytic_fps == pytest.approx(200e6 / 2790)
    assert r.best_fps == r.analytic_fps and r.finn_fps is None and r.seconds < 30


def test_bound_scales_with_clock_and_pixels():
    small = best_feasible_fps({"name": "resnet8", "in_size": (16, 16)}, "zcu104", clock_mhz=100)
    assert small.analytic_fps == pytest.approx(100e6 / (18 * 18 + 2))
    rows = dict(min_cycles_per_layer({"name": "resnet8", "in_size": (16, 40), "num_classes": 2}))
    assert rows["layers.1.conv1 (MVAU/VVAU)"] == 4 * 10  # 1/4 resolution, one output pixel per cycle


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="model_cfg needs name and in_size"):
        best_feasible_fps({"name": "resnet8", "size": (32, 32)}, "zcu104")
    with pytest.raises(UserError, match="method must be"):
        best_feasible_fps({"name": "resnet8", "in_size": (32, 32)}, "zcu104", method="guess")


def test_finn_estimate_reaches_the_bound_when_it_fits(tmp_path):
    r = best_feasible_fps({"name": "resnet8", "in_size": (16, 40), "width": 0.25}, "zcu104", method="finn",
                          work_dir=tmp_path)
    assert r.finn_limit == "fully parallel" and r.finn_fps == pytest.approx(r.analytic_fps)
    assert 0 < r.finn_resources["LUT"] < 0.7 * 230_400


def _recipe_model(name: str) -> tuple[dict, object]:
    from pathlib import Path

    from qdeploy.recipe import load_recipe

    r = load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    m = r.model
    cfg = dict(name=m.name, in_size=tuple(r.dataset.size), width=m.width, weight_bits=m.weight_bits,
               act_bits=m.act_bits, input_bits=m.input_bits, num_classes=6 if r.dataset.task == "type" else 2)
    if m.edge_weight_bits is not None:
        cfg["edge_weight_bits"] = m.edge_weight_bits
    return cfg, r


@pytest.mark.parametrize("name", ["default", pytest.param("neu", marks=pytest.mark.slow)])
def test_recipe_fps_target_fits_the_part(name, tmp_path):
    """The recipes' own FPGA targets (default job 40,000 fps, NEU 10,000) fit 70% of every ZCU104
    resource by FINN's estimates: the fastest folding that fits is at least the target."""
    cfg, r = _recipe_model(name)
    f = best_feasible_fps(cfg, r.fpga.part, r.fpga.clock_mhz, budget=r.fpga.budget, method="finn", work_dir=tmp_path)
    assert f.finn_fps >= r.fpga.target_fps, (f.finn_fps, f.finn_limit)
    cap = {"LUT": 230_400, "BRAM_18K": 624, "URAM": 96, "DSP": 1_728}
    assert all(f.finn_resources[k] <= r.fpga.budget * c for k, c in cap.items()), f.finn_resources
    assert f.finn_resources["DSP"] > 50  # the MACs are on the part's DSPs too, not on LUTs alone
