"""quant.models: registry, topologies, quantizers and the float -> QAT weight transfer."""
import numpy as np
import pytest
import torch
from torch import nn

from core.errors import UserError
from quant.models import check_fpga, create_model, list_models, load_float_weights, model_info
from quant.preprocess import to_input

SIZES = [(64, 64), (48, 96)]
FPGA_MODELS = ["resnet8", "resnet18", "effnet_lite"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _brevitas_modules(model):
    return [m for m in model.modules() if type(m).__module__.startswith("brevitas.")]


def _calibrate(model, batches=4, size=(64, 64), seed=0):
    """Collect BN and activation statistics on random data (BN leaves the identity)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(8, 1, *size, generator=g))
    return model.eval()


def test_registry_lists_names_and_info():
    assert list_models() == ["effnet_b0", "effnet_lite", "resnet18", "resnet8", "segdec", "segdec_lite"]
    assert list_models("resnet*") == ["resnet18", "resnet8"]
    assert list_models("vgg*") == []
    info = model_info("effnet_b0")
    assert (info.family, info.fpga_lowerable, info.int8_only) == ("efficientnet", False, True)
    assert all(model_info(n).fpga_lowerable and not model_info(n).int8_only for n in FPGA_MODELS)
    assert "squeeze-excite" in info.description


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="effnet_b0, effnet_lite, resnet18, resnet8, segdec, segdec_lite"):
        create_model("resnet9", 2)
    with pytest.raises(UserError, match="unknown model 'vgg'"):
        model_info("vgg")


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("name", ["resnet8", "resnet18", "effnet_lite", "effnet_b0"])
def test_every_model_builds_and_returns_logits(name, quantized):
    if name == "effnet_b0" and quantized:
        pytest.skip("float only")
    torch.manual_seed(0)
    for num_classes in (2, 6):
        for size in SIZES:
            model = create_model(name, num_classes, size, width=0.25, quantized=quantized).eval()
            with torch.no_grad():
                out = model(torch.rand(3, 1, *size))
            assert type(out) is torch.Tensor and out.dtype == torch.float32
            assert out.shape == (3, num_classes) and torch.isfinite(out).all()
            assert bool(_brevitas_modules(model)) == quantized
            assert model.create_args["name"] == name and model.create_args["in_size"] == list(size)


def test_default_width_channels_and_rounding():
    def conv_widths(model):
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    full = create_model("resnet8", 2, quantized=False)
    assert sorted(set(conv_widths(full))) == [16, 32, 64]
    assert sorted(set(conv_widths(create_model("resnet8", 2, width=0.25, quantized=False)))) == [4, 8, 16]
    assert sorted(set(conv_widths(create_model("resnet18", 2, quantized=False)))) == [64, 128, 256, 512]
    for width in (0.3, 0.55, 1.7):
        assert all(c % 4 == 0 for c in conv_widths(create_model("effnet_lite", 2, width=width, quantized=False)))


@pytest.mark.parametrize("name, size", [("resnet8", (64, 256)), ("resnet8", (37, 50)), ("resnet18", (48, 96)),
                                        ("effnet_lite", (64, 64)), ("effnet_lite", (64, 256))])
def test_global_pool_averages_the_whole_final_map_in_finn_arithmetic(name, size):
    model = create_model(name, 2, size, width=0.25).eval()
    seen = {}
    model.pool.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.no_grad():
        model(torch.rand(2, 1, *size))
    inp, out = seen["inp"], seen["out"]
    assert tuple(inp.value.shape[2:]) == model.feature_size == tuple(model.pool.kernel_size)
    assert tuple(out.value.shape[2:]) == (1, 1)
    # The window sum of unsigned act_bits integers, floor-shifted right to at most 8 bits; no
    # left shift when the sum is narrower (FINN's QuantAvgPool2d cannot shift left).
    total = inp.int().sum((2, 3), keepdim=True).long()
    sum_max = (2 ** model.create_args["act_bits"] - 1) * inp.value.shape[2] * inp.value.shape[3]
    sum_bits = (sum_max - 1).bit_length()
    shift = max(0, sum_bits - 8)
    assert float(out.bit_width) == min(8, sum_bits)
    assert torch.equal(out.int().long(), total >> shift)
    assert torch.allclose(out.scale, inp.scale * 2**shift / (inp.value.shape[2] * inp.value.shape[3]))


def test_check_fpga_accepts_quantized_fpga_models_square_or_not():
    check_fpga(create_model("resnet8", 2, (64, 64), width=0.25))
    check_fpga(create_model("effnet_lite", 2, (60, 64), width=0.25))
    check_fpga(create_model("resnet8", 2, (64, 256), width=0.25))  # 8x32 final map: compilers/finn/custom_ops.py
    with pytest.raises(UserError, match="float twin"):
        check_fpga(create_model("resnet8", 2, quantized=False))
    with pytest.raises(UserError, match="cannot be lowered by FINN: choose effnet_lite|resnet18|resnet8"):
        check_fpga(create_model("effnet_b0", 2, quantized=False))


@pytest.mark.parametrize("key", ["weight_bits", "act_bits", "input_bits"])
@pytest.mark.parametrize("bad", [1, 9, 4.0, True, "4"])
def test_bit_widths_outside_2_to_8_are_user_errors(key, bad):
    with pytest.raises(UserError, match=f"{key} must be an integer from 2 to 8"):
        create_model("resnet8", 2, **{key: bad})


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), "num_classes must be an integer >= 2"),
    (dict(in_size=(64,)), "in_size must be"),
    (dict(in_size=(4, 64)), "in_size must be"),
    (dict(width=0), "width must be"),
])
def test_other_arguments_are_validated(kwargs, match):
    args = dict(name="resnet8", num_classes=2) | kwargs
    with pytest.raises(UserError, match=match):
        create_model(**args)


def test_effnet_b0_quantized_points_to_npu_gpu_and_fpga_models():
    with pytest.raises(UserError) as err:
        create_model("effnet_b0", 2)
    assert str(err.value) == ("effnet_b0 uses SiLU and squeeze-excite, which FINN cannot lower; use it for "
                              "targets npu/gpu (INT8 via NNCF) or choose effnet_lite|resnet18|resnet8|segdec|segdec_lite for fpga")
    model = create_model("effnet_b0", 2, quantized=False)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"SiLU", "SqueezeExcite", "Sigmoid"} <= kinds and "ReLU" not in kinds


@pytest.mark.parametrize("bits", [8, 4])
def test_input_quantizer_is_a_fixed_pixel_grid(bits):
    model = create_model("resnet8", 2, width=0.25, input_bits=bits)
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_input(pixels)
    q = model.input_quant(x)
    levels = 2**bits - 1
    assert float(q.scale) == np.float32(1.0) / np.float32(levels)
    if bits == 8:  # exactly the identity on every pixel value: training == hardware input
        assert torch.equal(q.value, x)
    assert torch.equal(q.int().flatten(), torch.round(x.flatten().double() * levels).to(q.int().dtype))
    model.train()(torch.rand(4, 1, 64, 64))  # training does not move a constant scale
    assert float(model.input_quant(x).scale) == np.float32(1.0) / np.float32(levels)


@pytest.mark.parametrize("wbits, abits", [(4, 4), (3, 6)])
def test_weights_and_activations_use_the_requested_bits(wbits, abits):
    size = (32, 32)
    model = _calibrate(create_model("effnet_lite", 2, size, width=0.25, weight_bits=wbits, act_bits=abits), 2, size)
    convs = [m for m in model.modules() if type(m).__name__ == "QuantConv2d"]
    for conv in convs:
        w = conv.quant_weight()
        limit = 2 ** (wbits - 1) - 1  # narrow range, symmetric
        assert int(w.int().abs().max()) == limit  # per-channel max scaling reaches the range
        assert w.scale.shape == (conv.out_channels, 1, 1, 1)  # per output channel
        assert conv.bias is None
    depthwise = [c for c in convs if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    seen = []
    for m in model.modules():
        if type(m).__name__ in ("QuantReLU", "QuantIdentity") and m is not model.input_quant:
            m.register_forward_hook(lambda mod, i, o: seen.append((float(o.bit_width), bool(o.signed))))
    with torch.no_grad():
        model(torch.rand(2, 1, *size))
    assert seen and {b for b, _ in seen} == {abits}
    assert {s for _, s in seen} == {True, False}  # signed linear bottlenecks, unsigned ReLU6
    assert model.fc.bias is None and type(model.fc).__name__ == "QuantLinear"


def test_residual_add_quantizes_both_operands_with_one_quantizer():
    model = _calibrate(create_model("resnet8", 2, width=0.25))
    calls = {}
    for name, block in model.layers.named_children():
        block.add_quant.register_forward_hook(lambda m, i, o, n=name: calls.setdefault(n, []).append(o))
    with torch.no_grad():
        model(torch.rand(2, 1, 64, 64))
    assert sorted(calls) == ["0", "1", "2"]
    for outs in calls.values():
        assert len(outs) == 2 and torch.equal(outs[0].scale, outs[1].scale)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "MaxPool2d" not in kinds and "AdaptiveAvgPool2d" not in kinds


def test_float_checkpoint_initialises_the_qat_model():
    torch.manual_seed(0)
    float_model = _calibrate(create_model("resnet8", 3, width=0.5, quantized=False))
    with torch.no_grad():
        for m in float_model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    qat = create_model("resnet8", 3, width=0.5, weight_bits=8, act_bits=8, input_bits=8)
    report = load_float_weights(qat, float_model.state_dict())

    assert set(report.loaded) == set(float_model.state_dict())
    assert report.quantizer_keys and all(".act_quant." in k for k in report.quantizer_keys)
    assert torch.equal(qat.stem[0].weight, float_model.stem[0].weight)
    # Collect activation statistics with frozen BN: the 8-bit model then tracks the float one.
    qat.train()
    for m in qat.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(8):
            qat(torch.rand(8, 1, 64, 64, generator=g))
        x = torch.rand(64, 1, 64, 64, generator=g)
        want, got = float_model.eval()(x), qat.eval()(x)
    assert torch.corrcoef(torch.stack([want.flatten(), got.flatten()]))[0, 1] > 0.99
    assert (want.argmax(1) == got.argmax(1)).float().mean() >= 0.9


def test_float_checkpoint_of_another_model_is_a_user_error():
    qat = create_model("resnet8", 2, width=0.5)
    with pytest.raises(UserError, match="same model name, width and num_classes"):
        load_float_weights(qat, create_model("resnet8", 2, width=1.0, quantized=False))
    with pytest.raises(UserError, match="is not in the QAT model"):
        load_float_weights(qat, create_model("effnet_lite", 2, width=0.5, quantized=False))
    partial = {k: v for k, v in create_model("resnet8", 2, width=0.5, quantized=False).state_dict().items()
               if not k.startswith("fc.")}
    with pytest.raises(UserError, match="lacks 1 weights of the QAT model, e.g. fc.weight"):
        load_float_weights(qat, partial)
