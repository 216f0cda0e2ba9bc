"""The one comparison of two logit arrays, and the bounds it is judged by.

    compare(logits, reference) -> dict
        n, argmax_agreement (a reference tie within the bit-exact tolerance counts as
        agreement), max_abs_diff, max_abs_diff_rel (relative to the logit scale = max
        |reference|), logit_scale, exact (max_abs_diff_rel <= BIT_EXACT_REL), worst_sample,
        flipped_indices / flipped_margins (the first 20 disagreeing images and how close each
        was to a tie in the reference: top-1 minus top-2 logit).

    one_step_bound(step, head_weight) -> float
        the largest logit difference two correct executions of the same INT8 model may show.

Why these bounds and not a number measured on one CPU:
- BIT_EXACT_REL: an integer datapath (FINN) reproduces the reference's integers exactly;
  only the final float scale may round, a few float32 ulps of the logit scale (1e-7);
  1e-6 leaves a decade of room and still catches any one-step error (>= 1e-3 of the scale
  at 8 bits or fewer).
- one_step_bound: two exact INT8 executions (NNCF's torch model, OpenVINO with exact
  accumulation, onnxruntime running Q/DQ as specified) differ only in float32 summation
  order, so an activation whose exact value lies within rounding of a quantization boundary
  can round either way: one step there. The classifier's head reads one quantized vector
  (the pooled features) with a float Linear, so if every head input is at most one step
  off, logit i moves by at most step * sum_j |W_ij|. That holds for a shallow model whose
  head averages a large map (an upstream flip moves the mean by a fraction of a step: the
  tests' toy model); in a deep model flips upstream can add up to more than one step at the
  head (the default ResNet-8: 1.2x the bound), so reports show it, gates do not use it.
  Saturating int8 kernels (a CPU without VNNI) are many steps off and exceed it.
"""
from __future__ import annotations

import numpy as np

BIT_EXACT_REL = 1e-6


def compare(logits, reference) -> dict:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(logits, dtype=np.float64).reshape(ref.shape)
    d = np.abs(out - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    scale = scale or 1.0
    tol = BIT_EXACT_REL * scale
    if len(ref):
        picked = ref[np.arange(len(ref)), out.argmax(axis=1)]
        agree = picked >= ref.max(axis=1) - tol
    else:
        agree = np.ones(0, dtype=bool)
    flips = np.flatnonzero(~agree)
    top2 = np.sort(ref[flips[:20]], axis=1)[:, -2:] if len(flips) else np.zeros((0, 2))
    max_d = float(d.max()) if d.size else 0.0
    return {
        "n": int(len(ref)),
        "argmax_agreement": float(agree.mean()) if len(agree) else 1.0,
        "max_abs_diff": max_d,
        "max_abs_diff_rel": max_d / scale,
        "logit_scale": scale,
        "exact": bool(max_d <= tol),
        "worst_sample": int(d.max(axis=1).argmax()) if d.size else 0,
        "flipped_indices": flips[:20].tolist(),
        "flipped_margins": [round(float(m), 6) for m in (top2[:, 1] - top2[:, 0])],
    }


def one_step_bound(step: float, head_weight) -> float:
    """step * max_i sum_j |W_ij|, plus float32 rounding of the logits themselves."""
    w = np.abs(np.asarray(head_weight, dtype=np.float64))
    # the deployed head uses the int8-rounded weight: at most half a weight step (1/254 of
    # the largest |w| of its channel) larger than the float weight
    w = w + w.max(axis=1, keepdims=True) / 254.0
    return float(step * w.sum(axis=1).max()) * (1 + 1e-5)
