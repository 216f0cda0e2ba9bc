"""Parity gates: does each deployed target still behave like its QAT reference?

Two kinds of gate, shown as two verdicts:
- parity (recipe `gates`): FPGA bit-exact; NPU and GPU >= 99.9% argmax agreement; recall
  at the operating point no more than 1 point below the QAT reference;
- quality: the golden model and every target better than chance on the test set, and at
  least `gates.min_auroc` / `gates.min_ap` where the recipe sets them. Bit-exact parity of a
  model that finds no defect is no PASS.

The INT8 twins are exact executions on every CPU (the NPU twin switches to the IR's exact
semantics where the CPU's int8 kernels saturate: reference.twins.npu), so these gates mean
the same on an AVX2-only and an AVX-512 VNNI machine. Their max |d| is reported beside
core.compare.one_step_bound (one quantization step at every input of the head), not gated:
in a deep network a tie upstream can move a head input by more than one step.
"""
from __future__ import annotations

from core.compare import BIT_EXACT_REL


def _gate(target, gate, passed, value, limit, message, kind="parity"):
    return {"target": target, "gate": gate, "kind": kind, "passed": bool(passed), "value": float(value),
            "limit": float(limit), "message": message}


def quality_gates(key: str, m: dict, cfg) -> list[dict]:
    """Does model `key` find defects at all? Better than chance on the test set, always (the
    95% lower bound of its AUROC above 0.5, or, without an ok class, of its accuracy above the
    majority class's share), and the recipe's floors `gates.min_auroc` / `gates.min_ap`."""
    met, label, out = m.get("metrics") or {}, m.get("label", key), []
    if "auroc_lower95" in met and met["auroc_lower95"] == met["auroc_lower95"]:  # not NaN
        lo = met["auroc_lower95"]
        out.append(_gate(key, "better_than_chance", lo > 0.5, lo, 0.5,
                         f"{label}: AUROC {met['auroc']:.3f} (95% lower bound {lo:.3f}) "
                         + ("is above chance" if lo > 0.5 else "is not above chance (0.5): the model does not "
                            "find the defects; more data, epochs, resolution or a mask-supervised model"), "quality"))
    elif "accuracy_lower95" in met:
        lo, chance = met["accuracy_lower95"], met["accuracy_chance"]
        out.append(_gate(key, "better_than_chance", lo > chance, lo, chance,
                         f"{label}: accuracy {met['accuracy']:.3f} (95% lower bound {lo:.3f}) vs {chance:.3f} for "
                         "always answering the most frequent class", "quality"))
    for name, floor, value in (("min_auroc", cfg.min_auroc, met.get("auroc")), ("min_ap", cfg.min_ap, met.get("ap"))):
        if floor is None:
            continue
        if value is None or value != value:
            out.append(_gate(key, name, False, float("nan"), floor, f"{label}: gates.{name} is set but the task has no "
                             "defect score (no ok class)", "quality"))
            continue
        out.append(_gate(key, name, value >= floor, value, floor,
                         f"{label}: {name[4:].upper()} {value:.4f} (gates.{name} {floor:g})", "quality"))
    return out


def evaluate_gates(models: dict, cfg) -> list[dict]:
    """`models` is report["models"]; returns one record per gate checked."""
    gates = []
    for key, m in models.items():
        if cfg.check_quality and m.get("role") in ("golden", "target"):
            gates += quality_gates(key, m, cfg)
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
        mag = m.get("map_agreement")
        if target == "fpga" and cfg.fpga_bit_exact and mag:
            rel = mag.get("max_abs_diff_rel", float("inf"))
            gates.append(_gate("fpga", "map_bit_exact_max_abs_diff_rel", rel <= BIT_EXACT_REL, rel, BIT_EXACT_REL,
                               f"fpga: defect map max |d| {rel:.3g} of its scale vs Brevitas in float64 "
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


def failed(gates: list[dict], kind: str | None = None) -> list[dict]:
    return [g for g in gates if not g["passed"] and (kind is None or g.get("kind", "parity") == kind)]
