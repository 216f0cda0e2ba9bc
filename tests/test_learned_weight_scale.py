"""model.weight_scale: "learned": per-channel weight scales trained in QAT (LSQ-style), from
the max |w| of each channel at the first forward pass; the FINN flow lowers the result bit-exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_finn_models import images, logits

from compilers.finn import lower
from core.errors import UserError
from quant.export import export_qonnx
from quant.models import create_model, load_float_weights
from quant.preprocess import to_input
from targets.fpga_parts import get_part

SIZE = 16


def _scales(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "weight_quant" in n}


def _trained(steps: int = 30) -> torch.nn.Module:
    """resnet8 (width 0.25) with learned weight scales, QAT from a float twin for a few steps."""
    torch.manual_seed(0)
    twin = create_model("resnet8", 3, (SIZE, SIZE), width=0.25, quantized=False)
    model = create_model("resnet8", 3, (SIZE, SIZE), width=0.25, edge_weight_bits=8, weight_scale="learned")
    load_float_weights(model, twin)
    x = to_input(images(64, SIZE, seed=1))
    y = torch.arange(64) % 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    with torch.no_grad():
        model(x)  # initialises the scales: steps=0 returns them as initialised
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_learned_scales_start_at_the_channel_max_then_train():
    twin = create_model("resnet8", 3, (SIZE, SIZE), width=0.25, quantized=False)
    model = create_model("resnet8", 3, (SIZE, SIZE), width=0.25, weight_bits=4, weight_scale="learned")
    load_float_weights(model, twin)
    model.train()
    model(to_input(images(4, SIZE)))  # the first forward pass initialises the scales
    stem = model.stem[0]
    start = _scales(model)["stem.0.weight_quant.tensor_quant.scaling_impl.value"].flatten()
    w_max = twin.stem[0].weight.detach().abs().amax(dim=(1, 2, 3))
    assert torch.allclose(start, w_max, rtol=1e-6)
    assert stem.quant_weight().scale.flatten().allclose(w_max / 7)  # 4-bit narrow range: max |w| is level 7

    trained, initial = _trained(), _scales(_trained(steps=0))
    assert len(initial) == 10 and all(not torch.allclose(s, initial[n]) for n, s in _scales(trained).items())
    copy = create_model("resnet8", 3, (SIZE, SIZE), width=0.25, edge_weight_bits=8, weight_scale="learned")
    copy.load_state_dict(trained.state_dict())
    x = to_input(images(8, SIZE, seed=2))
    assert torch.equal(copy.eval()(x), trained(x))


def test_an_unknown_weight_scale_is_a_user_error():
    with pytest.raises(UserError, match="weight_scale must be one of max, learned"):
        create_model("resnet8", 3, (SIZE, SIZE), weight_scale="percentile")


def test_learned_scales_lower_through_finn_bit_exact(tmp_path):
    model = _trained()
    path = export_qonnx(model, (SIZE, SIZE), tmp_path / "learned.onnx")
    pixels = images(32, SIZE, seed=3)
    reference = logits(model, pixels)
    assert len(np.unique(reference.argmax(axis=1))) > 1
    result = lower(path, tmp_path / "finn", get_part("zcu104"), clock_mhz=200, target_fps=2000,
                   samples_uint8=pixels, reference_logits=reference, log=lambda m: None)
    assert result.bit_exact, [p.to_dict() for p in result.parity if not p.exact]
