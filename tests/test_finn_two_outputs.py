"""A two-output model (decision logits [N, C], segmentation map [N, 1, h, w]) through the
whole FINN flow: both outputs bit-exact at every stage, one hardware partition.

The model: an encoder to 1/8 (plain stride-2 convs: StreamlinePlus time grows with the
node count; exp/segdec.py runs the same heads on a residual encoder, also bit-exact), a 1x1 QuantConv2d seg head (BN, QuantReLU: the map
is an output and is pooled), and a decision head that concatenates the global average
of the encoder features with the global average and global max of the map (all three
re-quantized by one shared QuantReLU, flattened, concatenated on the last axis) before
a QuantLinear.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_finn_models import BITS, conv, randomize, relu
from test_finn_nonsquare import rect_images

from compilers.finn import STEPS, lower
from compilers.finn.checks import find_problems
from quant.preprocess import to_input
from targets.fpga_parts import get_part

qnn = pytest.importorskip("brevitas.nn")
from brevitas.quant import TruncTo8bit  # noqa: E402

H, W = 16, 40


class SegDecNet(nn.Module):
    def __init__(self, classes=2, size=(H, W)):
        super().__init__()
        self.encoder = nn.Sequential(conv(1, 8, s=2), nn.BatchNorm2d(8), relu(),
                                     conv(8, 8, s=2), nn.BatchNorm2d(8), relu(),
                                     conv(8, 16, s=2), nn.BatchNorm2d(16), relu())
        k = (size[0] // 8, size[1] // 8)
        self.seg = conv(16, 1, k=1)
        self.seg_bn = nn.BatchNorm2d(1)
        self.seg_q = relu()
        self.fpool = qnn.TruncAvgPool2d(kernel_size=k, stride=k, trunc_quant=TruncTo8bit)
        self.spool = qnn.TruncAvgPool2d(kernel_size=k, stride=k, trunc_quant=TruncTo8bit)
        self.smax = nn.MaxPool2d(kernel_size=k, stride=k)
        self.cat_q = qnn.QuantReLU(bit_width=8, return_quant_tensor=True)  # one scale for all concat inputs
        self.fc = qnn.QuantLinear(16 + 2, classes, bias=False, weight_bit_width=BITS)

    def forward(self, x):
        f = self.encoder(x)
        s = self.seg_q(self.seg_bn(self.seg(f)))
        parts = [self.cat_q(self.fpool(f)), self.cat_q(self.spool(s)), self.cat_q(self.smax(s))]
        z = torch.cat([torch.flatten(p, 1) for p in parts], dim=1)
        return self.fc(z), s.value  # a QuantTensor output would export its scale etc. as extra outputs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from quant.export import export_qonnx

    torch.manual_seed(0)
    model = randomize(SegDecNet(), 0)
    model.train()
    with torch.no_grad():
        x = to_input(rect_images(64, H, W, 1))
        for _ in range(3):
            model(x)
    model.eval()
    path = export_qonnx(model, (H, W), tmp_path_factory.mktemp("segdec") / "segdec.onnx")
    return path, model


def test_two_outputs_lower_bit_exact(exported, tmp_path):
    path, model = exported
    pixels = rect_images(16, H, W, seed=3)
    with torch.no_grad():
        logits, seg = copy.deepcopy(model).double()(to_input(pixels).double())
    reference = [logits.numpy(), seg.numpy().reshape(len(pixels), -1)]
    result = lower(path, tmp_path / "out", get_part("zcu104"), clock_mhz=200, target_fps=2000,
                   samples_uint8=pixels, reference_logits=reference, parity_batch=16, log=lambda m: None)
    assert [p.stage for p in result.parity] == [s.__name__ for s in STEPS]
    for p in result.parity:
        assert p.exact and len(p.outputs) == 2 and all(o["exact"] for o in p.outputs), p
    assert result.bit_exact
    assert result.host_ops == ["Transpose_0 (Transpose)"]  # one partition, both heads in hardware
    from qonnx.core.modelwrapper import ModelWrapper

    final = ModelWrapper(str(result.final_model))
    kinds = {n.op_type for n in final.graph.node}
    assert {"DuplicateStreams_hls", "StreamingConcat_hls", "Pool_hls"} <= kinds
    assert len(final.graph.output) == 2
    parent = ModelWrapper(str(result.parent_model))
    assert [parent.get_tensor_shape(o.name) for o in parent.graph.output] == [[1, 2], [1, 1, H // 8, W // 8]]


def test_a_quant_tensor_output_is_named_by_the_preflight(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from core.errors import UserError
    from quant.export import export_qonnx

    class Bad(SegDecNet):
        def forward(self, x):
            logits, _ = super().forward(x)
            return logits, self.seg_q(self.seg_bn(self.seg(self.encoder(x))))  # a QuantTensor

    model = randomize(Bad(), 0).eval()
    path = export_qonnx(model, (H, W), tmp_path / "bad.onnx")
    with pytest.raises(UserError, match=r"graph-io.*return \.value"):
        find_problems(ModelWrapper(str(path)))


class Concat4d(SegDecNet):
    def forward(self, x):
        f = self.encoder(x)
        s = self.seg_q(self.seg_bn(self.seg(f)))
        z = torch.cat([self.cat_q(self.fpool(f)), self.cat_q(self.spool(s)), self.cat_q(self.smax(s))], dim=1)
        return self.fc(torch.flatten(z, 1)), s.value


class ConcatTwoScales(SegDecNet):
    def __init__(self):
        super().__init__()
        self.other_q = qnn.QuantReLU(bit_width=8, return_quant_tensor=True)

    def forward(self, x):
        f = self.encoder(x)
        s = self.seg_q(self.seg_bn(self.seg(f)))
        parts = [self.cat_q(self.fpool(f)), self.other_q(self.spool(s)), self.cat_q(self.smax(s))]
        # Brevitas refuses to cat QuantTensors of different scales; their values it concatenates
        z = torch.cat([torch.flatten(p.value, 1) for p in parts], dim=1)
        return self.fc(z), s.value


@pytest.mark.parametrize("cls, rule, words", [(Concat4d, "concat-shape", "flatten each input"),
                                              (ConcatTwoScales, "concat-scale", "same QuantReLU")])
def test_preflight_names_concats_finn_cannot_lower(tmp_path, cls, rule, words):
    from qonnx.core.modelwrapper import ModelWrapper
    from quant.export import export_qonnx

    torch.manual_seed(0)
    model = randomize(cls(), 0)
    model.train()
    with torch.no_grad():
        model(to_input(rect_images(8, H, W, 1)))
    model.eval()
    path = export_qonnx(model, (H, W), tmp_path / "m.onnx")
    (p,) = find_problems(ModelWrapper(str(path)))
    assert p.rule == rule and words in p.hint and p.op_type == "Concat"


def test_the_lowerable_two_output_model_passes_the_preflight(exported):
    from qonnx.core.modelwrapper import ModelWrapper

    assert find_problems(ModelWrapper(str(exported[0]))) == []
