"""The best fps a model can reach on a part, known before any training.

    best_feasible_fps(model_cfg, part, clock_mhz=None, budget=0.7, method="analytic") -> Feasibility

Two answers, a cheap one and a faithful one:

- "analytic" (milliseconds, model config and input size only): a FINN dataflow pipeline
  is as fast as its slowest layer, and no layer can be faster than its streams allow.
  At full parallelism (PE = output channels, SIMD = input channels, whole windows) a
  layer still moves one pixel per cycle: FMPadding and ConvolutionInputGenerator read
  the padded input, (H + 2p) * (W + 2p) pixels (+2 cycles for the generator), an MVAU
  or VVAU writes Ho * Wo pixels, Thresholding / DuplicateStreams / ElementwiseAdd move
  H * W. The stem sees the full-resolution image, so the bound is essentially the pixel
  rate f_clk / ((H + 2)(W + 2)) of a 3x3 pad-1 stem (grayscale: 1 channel = 1 pixel per
  cycle; FINN has no multi-pixel input stream). Checked against FINN's own estimates of
  the fully parallel layers of resnet8 at 32x80: stem generator 2,790 cycles (34*82 + 2),
  everything else below it.
- "finn" (about 30-60 s for resnet8): the model with random weights is exported and
  lowered to the specialized dataflow graph (the flow's steps up to specialize_layers),
  and compilers.finn.folding searches the fastest folding that fits `budget` of the part's
  resources (FINN's per-layer LUT/BRAM/URAM/DSP estimates). This is the number a build
  will get (weights change bit widths little: they are full-range after QAT), and it
  includes resource limits the pixel-rate bound ignores.

The result names the bottleneck layer and, for "finn", the resource that stopped it.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from core import layout
from core.errors import UserError
from targets.fpga_parts import get_part

# create_model arguments a model config may carry (recipe.model plus dataset.size)
_MODEL_KEYS = ("name", "num_classes", "in_size", "width", "weight_bits", "act_bits", "input_bits", "edge_weight_bits",
               "weight_scale")


@dataclass
class Feasibility:
    method: str
    part: str
    clock_mhz: float
    in_size: tuple
    pixel_rate_fps: float  # f_clk / (input pixels): a pipeline reading one input pixel per cycle
    analytic_fps: float  # f_clk / slowest layer at full parallelism (stream limits only)
    analytic_bottleneck: str
    finn_fps: Optional[float] = None  # fastest folding within budget (FINN estimates), method "finn"
    finn_limit: Optional[str] = None  # what stopped it: "fully parallel" or "<resource> budget"
    finn_resources: Optional[dict] = None  # of that folding
    seconds: float = 0.0
    layers: list = field(default_factory=list)  # analytic: [(layer, min cycles)]

    @property
    def best_fps(self) -> float:
        return self.finn_fps if self.finn_fps is not None else self.analytic_fps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_fps"] = self.best_fps
        return d


def best_feasible_fps(model_cfg: dict, part, clock_mhz: Optional[float] = None, budget: float = 0.7,
                      method: str = "analytic", work_dir: Optional[str | Path] = None) -> Feasibility:
    """The best fps `model_cfg` can reach on `part` at `clock_mhz` (None: the part's default).

    model_cfg: create_model arguments: name, in_size (h, w), and optionally width,
    weight_bits, act_bits, input_bits, num_classes (2 if absent: it does not change the
    pipeline's speed).
    """
    t0 = time.perf_counter()
    part = get_part(part) if isinstance(part, str) else part
    clock_mhz = float(clock_mhz or part.default_clock_mhz)
    if method not in ("analytic", "finn"):
        raise UserError(f"best_feasible_fps: method must be 'analytic' or 'finn', got {method!r}")
    cfg = _model_args(model_cfg)
    h, w = cfg["in_size"]
    layers = min_cycles_per_layer(cfg)
    name, cycles = max(layers, key=lambda x: x[1])
    clock_hz = clock_mhz * 1e6
    out = Feasibility(method, part.name, clock_mhz, (h, w), clock_hz / (h * w), clock_hz / cycles, name,
                      layers=layers)
    if method == "finn":
        out.finn_fps, out.finn_limit, out.finn_resources = _finn_fps(cfg, part, clock_mhz, budget, out.analytic_fps,
                                                                     work_dir)
    out.seconds = round(time.perf_counter() - t0, 3)
    return out


def _model_args(model_cfg: dict) -> dict:
    unknown = set(model_cfg) - set(_MODEL_KEYS)
    if unknown or "name" not in model_cfg or "in_size" not in model_cfg:
        raise UserError(f"best_feasible_fps: model_cfg needs name and in_size and may have {', '.join(_MODEL_KEYS)}; "
                        f"got {sorted(model_cfg)}")
    cfg = dict(model_cfg)
    cfg.setdefault("num_classes", 2)
    cfg["in_size"] = tuple(cfg["in_size"])
    return cfg


def min_cycles_per_layer(cfg: dict) -> list[tuple[str, int]]:
    """[(layer, cycles per frame at full parallelism)] from the float twin's layer shapes."""
    import torch
    from torch import nn

    from quant.models import create_model

    model = create_model(**{**cfg, "quantized": False}).eval()
    rows: list[tuple[str, int]] = []
    hooks = []

    def conv_hook(name):
        def hook(mod, inp, out):
            _, _, hi, wi = inp[0].shape
            _, _, ho, wo = out.shape
            ph, pw = (mod.padding if isinstance(mod.padding, tuple) else (mod.padding, mod.padding))
            k, s = mod.kernel_size, mod.stride
            rows.append((f"{name} (MVAU/VVAU)", ho * wo))
            if k != (1, 1) or s != (1, 1):  # lowered with a sliding-window generator (and padding)
                rows.append((f"{name} (ConvolutionInputGenerator)", (hi + 2 * ph) * (wi + 2 * pw) + 2))
        return hook

    def pool_hook(name):
        def hook(mod, inp, out):
            _, _, hi, wi = inp[0].shape
            rows.append((f"{name} (ConvolutionInputGenerator + Pool)", hi * wi + 2))
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
            hooks.append(mod.register_forward_hook(pool_hook(name)))
    h, w = cfg["in_size"]
    with torch.no_grad():
        model(torch.zeros(1, 1, h, w))
    for hk in hooks:
        hk.remove()
    rows.insert(0, ("input (Thresholding / stream)", h * w))
    return rows


def _finn_fps(cfg, part, clock_mhz, budget, analytic_fps, work_dir):
    """Fastest folding within budget on the lowered model (random weights)."""
    from compilers.finn import steps as S
    from compilers.finn.env import ensure_finn, finn_build_dir
    from compilers.finn.flow import STEPS, clear_outputs, load_qonnx, run_steps
    from quant import float64_values
    from quant.export import export_qonnx
    from quant.models import create_model
    from compilers.finn.folding import FoldingInfeasible, fold

    ensure_finn()
    model = create_model(**cfg).eval()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = export_qonnx(model, cfg["in_size"], Path(tmp) / layout.QONNX)
        graph = load_qonnx(path)
        float64_values.widen(graph.model)
        flow = S.FlowConfig(Path(tmp) / "finn", part, clock_mhz, analytic_fps, budget)
        clear_outputs(flow)
        names = [s.__name__ for s in STEPS]
        upto = STEPS[: names.index("specialize_layers") + 1]
        with finn_build_dir(flow.finn_tmp):
            child, _ = run_steps(graph, flow, steps=upto, log=lambda m: None)
            target = math.floor(analytic_fps)
            try:
                res = fold(child, part, clock_mhz, target, budget)
                return res.est_fps, "fully parallel", dict(res.resources)
            except FoldingInfeasible as e:
                if e.best_fps is None:
                    return 0.0, str(e), None
                res = fold(child, part, clock_mhz, e.best_fps, budget)
                limit = str(e).split(";")[0]
                return res.est_fps, limit, dict(res.resources)
