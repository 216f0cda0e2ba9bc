"""Parity gates: does each deployed target still behave like its QAT reference?

Defaults (recipe `gates`): FPGA bit-exact; NPU and GPU >= 99.9% argmax agreement;
recall at the operating point no more than 1 point below the QAT reference.

The INT8 twins are exact executions on every CPU (the NPU twin switches to the IR's exact
semantics where the CPU's int8 kernels saturate: reference.twins.npu), so these gates mean
the same on an AVX2-only and an AVX-512 VNNI machine. Their max |d| is reported beside
core.compare.one_step_bound (one quantization step at every input of the head), not gated:
in a deep network a tie upstream can move a head input by more than one step.
"""
from __future__ import annotations

from core.compare import BIT_EXACT_REL


def _gate(target, gate, passed, value, limit, message):
    return {"target": target, "gate": gate, "passed": bool(passed), "value": float(value), "limit": float(limit),
            "message": message}


def evaluate_gates(models: dict, cfg) -> list[dict]:
    """`models` is report["models"]; returns one record per gate checked."""
    gates = []
    for key, m in models.items():
        if m.get("role") != "target":
            continue
        target, ag = m["target"], m.get("agreement_reference") or {}
        first = (m.get("extra") or {}).get("first_divergent_node")
        where = f"; first divergent node: {first}" if first else ""
        if target == "fpga" and cfg.fpga_bit_exact:
            rel = ag.get("max_abs_diff_rel", float("inf"))
            gates.append(_gate("fpga", "bit_exact_max_abs_diff_rel", rel <= BIT_EXACT_REL, rel, BIT_EXACT_REL,
                               f"fpga: max |d| {rel:.3g} of the logit scale vs Brevitas in float64 "
                               f"(limit {BIT_EXACT_REL:g}){where}"))
        # a bit-exact target must agree on every image
        agree = ag.get("argmax_agreement", 0.0)
        limit = 1.0 if target == "fpga" and cfg.fpga_bit_exact else cfg.min_agreement
        gates.append(_gate(target, "argmax_agreement", agree >= limit, agree, limit,
                           f"{target}: argmax agreement {agree:.4%} vs its QAT reference (limit {limit:.4%}){where}"))
        ref = models.get(m.get("reference") or "", {}).get("metrics", {})
        if "op_recall" in ref and "op_recall" in m.get("metrics", {}):
            drop = ref["op_recall"] - m["metrics"]["op_recall"]
            gates.append(_gate(target, "recall_drop_at_operating_point", drop <= cfg.max_recall_drop + 1e-12, drop,
                               cfg.max_recall_drop,
                               f"{target}: recall at the operating point {m['metrics']['op_recall']:.4f} vs "
                               f"{ref['op_recall']:.4f} for its QAT reference (drop {drop:+.4f}, limit {cfg.max_recall_drop})"))
    return gates


def failed(gates: list[dict]) -> list[dict]:
    return [g for g in gates if not g["passed"]]
