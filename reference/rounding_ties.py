"""Float32 rounding ties: why an integer design can differ from its float32 Brevitas model.

A Brevitas activation quantizer rounds x / scale. When that value lies within a float32 ulp
or two of a rounding boundary (k + 0.5), the side it lands on depends on summation order:
PyTorch, onnxruntime and FINN's thresholds (derived from float32 scales) may each decide
differently, so one activation is one step off and the logits move a little. `tie_margins`
measures, per image, the smallest relative distance to a boundary over every activation
quantizer of the Brevitas model; an image whose FPGA logits differ and whose margin is below
TIE_MARGIN is explained by such a tie rather than by a wrong design.
"""
from __future__ import annotations

import numpy as np
import torch

from quant.preprocess import to_input

TIE_MARGIN = 4 * float(np.finfo(np.float32).eps)  # 4 float32 ulps, relative (4.8e-7)


@torch.no_grad()
def tie_margins(model, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per image [N]: min over activation quantizers of |frac(x/scale) - 0.5| / max(|x/scale|, 1)."""
    from brevitas.nn import QuantIdentity, QuantReLU

    current: list[np.ndarray] = []

    def hook(module, inputs, output):
        if not hasattr(output, "scale"):
            return
        x = inputs[0].value if hasattr(inputs[0], "value") else inputs[0]
        bits, signed = int(output.bit_width), bool(output.signed)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if isinstance(module, QuantReLU):
            x = torch.relu(x)
        # beyond the integer range a value clamps: only boundaries inside it can be ties
        y = (x / output.scale).double().clamp(lo, hi).flatten(1)
        margin = ((y - torch.floor(y)) - 0.5).abs() / y.abs().clamp_min(1.0)
        current.append(margin.amin(1).numpy())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (QuantReLU, QuantIdentity))]
    model.eval()
    out = []
    try:
        for start in range(0, len(pixels), batch_size):
            current.clear()
            model(to_input(pixels[start:start + batch_size]))
            out.append(np.min(np.stack(current), axis=0) if current else np.full(len(pixels[start:start + batch_size]), np.inf))
    finally:
        for h in handles:
            h.remove()
    return np.concatenate(out) if out else np.zeros(0)


def explain_differences(model, pixels: np.ndarray, logits: np.ndarray, reference: np.ndarray, exact_rel: float) -> dict:
    """Which images differ beyond `exact_rel` of the logit scale, and are they all ties?"""
    ref = np.asarray(reference, np.float64)
    scale = float(np.abs(ref).max()) or 1.0
    rel = np.abs(np.asarray(logits, np.float64).reshape(ref.shape) - ref).max(1) / scale
    differing = np.flatnonzero(rel > exact_rel)
    margins = tie_margins(model, pixels[differing]) if len(differing) else np.zeros(0)
    ties = margins < TIE_MARGIN
    unexplained = differing[~ties]
    return {"n": int(len(rel)), "n_differing": int(len(differing)), "n_ties": int(ties.sum()),
            "tie_margin": TIE_MARGIN, "differing": differing[:20].tolist(), "margins": margins[:20].tolist(),
            "unexplained": unexplained[:20].tolist(),
            "max_abs_diff_rel_unexplained": float(rel[unexplained].max()) if len(unexplained) else 0.0}
