"""Render the parity report (report.json data) as plots, Markdown, HTML and a console table.

    paths = render_report(report, Path("build/default/report"))
    # {"md": .../report.md, "html": .../report.html, "roc": .../plots/roc.png, ...}
    print_console_summary(report)

The report is data first (docs/CONTRACTS.md, "the parity report"); this module only
reads it. Markdown and HTML come from one list of blocks (headings, paragraphs, lists,
tables, images), so both say the same thing. Every part but "models" may be missing or
null: its section is replaced by a one-line "not built" note.
"""
from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.machine import summary
from core.atomic import write_text
from reference import plots

MODEL_ORDER = ("float", "qat", "fpga", "npu_qat", "npu", "gpu_qat", "gpu")
TARGETS = {"fpga": "FPGA (FINN)", "npu": "Intel NPU (OpenVINO)", "gpu": "NVIDIA GPU (TensorRT)"}
PLOT_NAMES = ("confusion", "roc", "pr", "agreement", "fpga_resources", "fpga_cycles", "fpga_stages", "throughput")


# ---------------------------------------------------------------------------- document model


@dataclass
class Cell:
    text: str
    status: str | None = None  # "pass" | "fail" | "estimate" | "strong"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "ul" | "table" | "img"
    text: str = ""
    status: str | None = None
    items: list[str] = field(default_factory=list)
    table: Table | None = None
    src: str = ""  # image path relative to the report dir


def _c(text, status=None) -> Cell:
    return Cell(str(text), status)


def _table(headers, rows) -> Block:
    return Block("table", table=Table(list(headers), [[c if isinstance(c, Cell) else _c(c) for c in r] for r in rows]))


# ---------------------------------------------------------------------------- formatting


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _int(x) -> str:
    return "–" if x is None else f"{int(round(x)):,}"


def _pct(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return _num(x)
    return f"{100 * x:.{digits}f}%"


def _diff(x) -> str:
    if x is None:
        return "–"
    return "0" if x == 0 else _num(x) if not math.isfinite(x) else f"{x:.3g}"


def _agree(ag: dict | None) -> str:
    if not ag:
        return "–"
    a, n = ag.get("argmax_agreement"), ag.get("n")
    flips = f" ({round((1 - a) * n)} flips)" if a is not None and n and a < 1 else ""
    shown = list(zip(ag.get("flipped_indices") or [], ag.get("flipped_margins") or []))
    if shown:  # which test images flipped, and how near a tie each was in the reference
        flips += ": " + ", ".join(f"#{i} at margin {m:.3g}" for i, m in shown[:5]) + (" ..." if len(shown) > 5 else "")
    return _pct(a) + flips


def _ordered(models: dict) -> list[tuple[str, dict]]:
    known = [k for k in MODEL_ORDER if k in models]
    return [(k, models[k]) for k in known + [k for k in models if k not in known]]


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v):
        return ", ".join(v)
    if isinstance(v, (dict, list, tuple)):
        text = json.dumps(v, sort_keys=True, default=str)
        return text if len(text) <= 200 else text[:199] + "…"
    return str(v)


# ---------------------------------------------------------------------------- sections


def _verdict(report: dict) -> list[Block]:
    """Two verdicts: quality (does the model find defects?) and parity (do the twins follow it?)."""
    gates = report.get("gates") or []
    out = []
    for kind, title in (("quality", "Quality"), ("parity", "Parity")):
        mine = [g for g in gates if g.get("kind", "parity") == kind]
        bad = [g for g in mine if not g["passed"]]
        if not mine:
            what = "no deployed target in this report" if kind == "parity" else "gates.check_quality is false"
            out.append(Block("p", f"{title}: none checked ({what})."))
        elif not bad:
            out.append(Block("p", f"{title}: PASS, all {len(mine)} gates passed.", status="pass"))
        else:
            out += [Block("p", f"{title}: FAIL, {len(bad)} of {len(mine)} gates failed.", status="fail"),
                    Block("ul", items=[g.get("message") or f"{g['target']}: {g['gate']}" for g in bad])]
    return out


def _dataset(report: dict) -> list[Block]:
    out = [Block("h2", "Dataset and operating point")]
    ds = report.get("dataset") or {}
    classes = ds.get("classes") or []
    ok = ds.get("ok_index")
    items = [f"Test images: {_int(ds.get('n_test'))}",
             f"Classes ({len(classes)}): {', '.join(classes) or '–'}",
             "Ok class: " + (f"{classes[ok]} (defect score = 1 - P({classes[ok]}))" if ok is not None and ok < len(classes)
                             else "none: every class is a defect type, so there is no defect score, ROC or PR curve")]
    op = report.get("operating_point") or {}
    if op.get("threshold") is not None:
        how = (f"chosen for recall {op['target_recall']:g} on the validation set" if op.get("target_recall") is not None
               else f"chosen for FPR {op['target_fpr']:g} on the validation set" if op.get("target_fpr") is not None
               else "fixed")
        items.append(f"Operating threshold on the defect score: {op['threshold']:.4f} ({how})")
    if op.get("report_fpr") is not None:
        items.append(f"Recall is also reported at FPR {op['report_fpr']:g}")
    out.append(Block("ul", items=items))
    if ds.get("notes"):
        out += [Block("p", "Notes:"), Block("ul", items=list(ds["notes"]))]
    return out


def _beside(op: dict | None, met: dict, key: str) -> str:
    """The value at the operating point, with the argmax one beside it: "0.9533 (argmax 0.9378)"."""
    if not op or key not in op:
        return _num(met.get(key))
    return f"{_num(op[key])} (argmax {_num(met.get(key))})"


def _summary(report: dict) -> list[Block]:
    fpr = (report.get("operating_point") or {}).get("report_fpr")
    headers = ["Model", "Runtime", "Device", "Precision", "Accuracy @ op", "Defect recall @ op", "FPR @ op",
               "Precision (macro) @ op", "Recall (macro) @ op", "F1 (macro) @ op", "AP", "AUROC",
               f"Recall @ FPR {fpr:g}" if fpr else "Recall @ FPR",
               "Reference", "Agreement vs ref", "max|d| vs ref", "Agreement vs float", "max|d| vs float"]
    rows = []
    for key, m in _ordered(report["models"]):
        met = m.get("metrics") or {}
        op = m.get("operating_point")
        d = (op or {}).get("defect") or {}
        ref, fl = m.get("agreement_reference"), m.get("agreement_float")
        rows.append([_c(m.get("label", key), "strong"), m.get("runtime", "–"), m.get("device", "–"),
                     m.get("precision", "–"), _beside(op, met, "accuracy"),
                     f"{_num(d['recall'])} (argmax {_num(met.get('defect_recall'))})" if d else "–",
                     _num(d.get("fpr"), 4) if d else "–",
                     _beside(op, met, "precision"), _beside(op, met, "recall"), _beside(op, met, "f1"),
                     _num(met.get("ap")), _num(met.get("auroc")), _num(met.get("recall_at_fpr")),
                     m.get("reference") or "–", _agree(ref), _diff((ref or {}).get("max_abs_diff")), _agree(fl),
                     _diff((fl or {}).get("max_abs_diff"))])
    thr = (report.get("operating_point") or {}).get("threshold")
    where = (f"at the stored operating threshold on the defect score (the QAT model's: {thr:.4f}; each INT8 model "
             "has its own, chosen the same way)" if thr is not None else "at the argmax (no ok class, no threshold)")
    return [Block("h2", "Models on the test set"), _table(headers, rows),
            Block("p", f"@ op: {where}, which is how the line decides; the argmax figure is beside it. "
                       "Agreement: share of test images where the argmax class equals the reference's; max|d|: "
                       "largest absolute logit difference. Reference: the model's own QAT reference.")]


def _confusion(report: dict) -> list[Block]:
    """Each model's confusion matrix as a table: at the operating point, the argmax count beside."""
    classes = (report.get("dataset") or {}).get("classes") or []
    out = [Block("h2", "Confusion matrices (rows: true class, columns: decided class)")]
    shown = False
    for key, m in _ordered(report["models"]):
        op_cm = (m.get("operating_point") or {}).get("confusion_matrix")
        am_cm = (m.get("metrics") or {}).get("confusion_matrix")
        if not am_cm or len(am_cm) != len(classes):
            continue
        shown = True
        rows = [[_c(classes[i], "strong")] + [f"{op_cm[i][j]} (argmax {am_cm[i][j]})" if op_cm else str(am_cm[i][j])
                                               for j in range(len(classes))] for i in range(len(classes))]
        what = "at the operating point, argmax beside" if op_cm else "argmax (no ok class)"
        out += [Block("h3", f"{m.get('label', key)}: {what}"), _table(["true \\ decided", *classes], rows)]
    return out if shown else []


def _verdicts(report: dict) -> list[Block]:
    """One paragraph per built target, in plain words: does it behave like its model, and
    what does the line get at the operating point."""
    models = report.get("models") or {}
    gates = report.get("gates") or []
    out = []
    for target, name in TARGETS.items():
        t = models.get(target)
        if not t:
            continue
        ref = models.get(t.get("reference") or "", {})
        ag = t.get("agreement_reference") or {}
        mine = [g for g in gates if g["target"] == target]
        failed = [g for g in mine if not g["passed"]]
        n = ag.get("n") or (t.get("metrics") or {}).get("n")
        flips = round((1 - ag.get("argmax_agreement", 1.0)) * n) if n else 0
        if ag.get("max_abs_diff_rel", 1) <= 1e-6:
            follows = f"computes what {ref.get('label', 'its QAT model')} computes on all {n} test images (bit-exact)"
        elif flips == 0:
            follows = (f"gives the same class as {ref.get('label', 'its QAT model')} on all {n} test images (logits "
                       f"within {_diff(ag.get('max_abs_diff'))}, {_pct(ag.get('max_abs_diff_rel'))} of the logit scale)")
        else:
            follows = (f"gives another class than {ref.get('label', 'its QAT model')} on {flips} of {n} test images "
                       f"(logits up to {_diff(ag.get('max_abs_diff'))} apart)")
        op = t.get("operating_point") or {}
        d = op.get("defect") or {}
        line = ""
        if d:
            line = (f" At the operating threshold {op['threshold']:.4f} it finds {d['tp']} of {d['tp'] + d['fn']} defective "
                    f"parts (recall {_pct(d['recall'], 1)}) and rejects {d['fp']} of {d['fp'] + d['tn']} good ones "
                    f"(false-positive rate {_pct(d['fpr'], 1)}); accuracy {_pct(op['accuracy'], 1)} "
                    f"(at the argmax: {_pct((t.get('metrics') or {}).get('accuracy'), 1)}).")
        ran = (f" It ran as {t.get('runtime', '?')} on {t.get('device', '?')}"
               + (", a stand-in for the device: the figures hold for the artifact, not the device's speed." if
                  not any(w in str(t.get("device", "")).lower() for w in ("npu", "gpu", "cuda", "board")) else "."))
        verdict = (f"Verdict: deployable, all {len(mine)} gates passed." if mine and not failed else
                   f"Verdict: NOT deployable, {len(failed)} of {len(mine)} gates failed: "
                   + "; ".join(g.get("message") or g["gate"] for g in failed) + "." if failed else "Verdict: no gate checked.")
        if target == "fpga" and report.get("fpga"):
            f = report["fpga"]
            est, tgt = f.get("est_fps"), f.get("target_fps")
            if est:
                ran += (f" Its throughput is an estimate of {_int(est)} fps for a target of {_int(tgt)} "
                        f"({'met' if tgt and est >= tgt else 'not met'}), from FINN's cycle model, not a board.")
        out.append(Block("p", f"{name}: the deployed model {follows}.{line}{ran} {verdict}",
                         status="fail" if failed else None))
    return [Block("h2", "Verdict per target"), *out] if out else []


def _gates(report: dict) -> list[Block]:
    gates = report.get("gates") or []
    out = [Block("h2", "Gates")]
    if not gates:
        return out + [Block("p", "No gates checked: no deployed target in this report.")]
    rows = [[g.get("kind", "parity"), g["target"], g["gate"], _value(g.get("value")), _value(g.get("limit")),
             _c("PASS", "pass") if g["passed"] else _c("FAIL", "fail"), g.get("message", "")] for g in gates]
    return out + [_table(["Kind", "Model", "Gate", "Value", "Limit", "Result", "Message"], rows)]


def _plots_section(plot_paths: dict) -> list[Block]:
    out = [Block("h2", "Plots")]
    captions = {"confusion": "Confusion matrices", "roc": "ROC curves", "pr": "Precision-recall curves",
                "agreement": "Agreement and max|d| per model"}
    shown = [Block("img", text=cap, src=f"plots/{name}.png") for name, cap in captions.items() if name in plot_paths]
    if "roc" not in plot_paths:
        shown.append(Block("p", "ROC and PR curves: not drawn (no ok class, so no defect score)."))
    return out + shown


def _cams(report: dict, out_dir: Path | None) -> list[Block]:
    cams = report.get("cams") or []
    if not cams:
        return []
    out = [Block("h2", "Where the model looks (Grad-CAM)"),
           Block("p", "Class-activation heatmaps of the deployed quantized model over test images of each defect "
                      "class (red: strongest evidence for the class; a wrong prediction is titled in red).")]
    for c in cams:
        if out_dir is None or (out_dir / c["file"]).is_file():
            out.append(Block("img", text=f"Grad-CAM: {c['class']}", src=c["file"]))
    return out


def _target_models(report: dict, target: str) -> list[tuple[str, dict]]:
    return [(k, m) for k, m in _ordered(report["models"]) if m.get("target") == target]


def _device_notes(target: str, models: list[tuple[str, dict]]) -> list[str]:
    items = []
    for key, m in models:
        extra = dict(m.get("extra") or {})
        notes = extra.pop("notes", None) or extra.pop("note", None)
        notes = [notes] if isinstance(notes, str) else list(notes or [])
        warning = extra.pop("warning", None)
        device = str(m.get("device", ""))
        if not notes and m.get("role") == "target":
            if target == "npu" and "npu" not in device.lower():
                notes.append(f"NPU not present: IR executed on {device or 'another device'}")
            if target == "gpu" and not any(w in device.lower() for w in ("gpu", "cuda", "nvidia")):
                notes.append(f"No NVIDIA GPU: executed on {device or 'another device'} with {m.get('runtime', '?')}")
        detail = "; ".join(f"{k}: {_value(v)}" for k, v in sorted(extra.items()) if v is not None and v != "")
        line = f"{m.get('label', key)}: {m.get('runtime', '?')} on {device or '?'}, {m.get('precision', '?')}"
        items.append(line + (f" ({detail})" if detail else ""))
        items += [f"{m.get('label', key)}: {n}" for n in notes]
        if warning:
            items.append(f"WARNING ({m.get('label', key)}): {warning}")
    return items


def _fpga(report: dict, plot_paths: dict) -> list[Block]:
    out = [Block("h2", TARGETS["fpga"])]
    models = _target_models(report, "fpga")
    f = report.get("fpga")
    if not f and not models:
        return out + [Block("p", "FPGA: not built.")]
    if models:
        out.append(Block("ul", items=_device_notes("fpga", models)))
    if not f:
        return out + [Block("p", "FPGA build details (resources, folding, per-layer): not built.")]
    est, target = f.get("est_fps"), f.get("target_fps")
    meets = "" if est is None or not target else (" (meets the target)" if est >= target else " (below the target)")
    out.append(Block("ul", items=[
        f"Part: {f.get('part', '?')}, clock {_num(f.get('clock_mhz'), 1)} MHz",
        f"Throughput: {_int(est)} fps, estimate from the slowest layer's cycles; target {_int(target)} fps{meets}"
        + (f"; the fastest design that fits was built: {f['shortfall']}" if f.get("shortfall") else ""),
    ]))
    cap, used, budget = f.get("capacity") or {}, f.get("resources") or {}, f.get("budget")
    rows = []
    for r in plots.RESOURCES:
        if r not in used and r not in cap:
            continue
        u, c = used.get(r), cap.get(r)
        frac = u / c if u is not None and c else None
        lim = c * budget if c and budget else None
        ok = None if frac is None or budget is None else frac <= budget
        rows.append([r, _int(u), _int(c), _pct(frac, 1), _int(lim),
                     "–" if ok is None else _c("yes", "pass") if ok else _c("OVER", "fail")])
    out += [Block("h3", "Resources"),
            _table(["Resource", "Used", "Capacity", "% of capacity",
                    f"Budget ({budget:.0%} of capacity)" if budget else "Budget", "Within budget"], rows)]
    if "fpga_resources" in plot_paths:
        out.append(Block("img", text="FPGA resources by layer", src="plots/fpga_resources.png"))
    layers = f.get("per_layer") or []
    if layers:
        worst = max(range(len(layers)), key=lambda i: layers[i].get("cycles") or 0)
        rows = [[str(i), _c(l["name"], "strong") if i == worst else l["name"], l.get("op_type", "–"),
                 _c(f"{_int(l.get('cycles'))} (bottleneck)", "fail") if i == worst else _int(l.get("cycles")),
                 *[_int(l.get(r)) for r in plots.RESOURCES]] for i, l in enumerate(layers)]
        out += [Block("h3", "Per layer (estimates)"),
                _table(["#", "Layer", "Op type", "Cycles / image", *plots.RESOURCES], rows)]
        if "fpga_cycles" in plot_paths:
            out.append(Block("img", text="FPGA cycles per layer", src="plots/fpga_cycles.png"))
    sf = f.get("setfolding")
    if sf:
        ours = {"est_fps": est, **used, "fits": all(used.get(r, 0) <= (cap.get(r) or 0) * (budget or 1) for r in cap)}
        ours.update(zip(("binding", "binding_share"), _binding(used, cap)))
        rows = [_fold_row("qdeploy folding", ours, cap), _fold_row("FINN SetFolding (fresh, same target)", sf, cap)]
        out += [Block("h3", "Folding: ours vs FINN SetFolding (estimates)"), _table(_FOLD_COLUMNS, rows)]
        if f.get("objective"):
            out.append(Block("p", f"Our folding's objective: {f['objective']}."
                                  + (f" Search: {f['search_seconds']:.1f} s." if f.get("search_seconds") else "")))
        if (f.get("replicas") or 1) > 1:
            inst = f.get("instance") or {}
            out.append(Block("p", f"Data-parallel replication: {f['replicas']} instances of the dataflow, each "
                                  f"{_int(inst.get('est_fps'))} fps (estimate); the fps and resources above are "
                                  f"{f['replicas']} x one instance's. FINN builds one instance (NEXT_STEPS.txt)."))
    pareto = f.get("pareto") or []
    if pareto:
        rows = []
        for p in pareto:
            for name, d in (("qdeploy", p.get("qdeploy") or {}), ("SetFolding", p.get("setfolding") or {})):
                gen = "–" if "codegen_error" not in d else (
                    _c("yes", "pass") if d["codegen_error"] is None else _c(f"no: {d['codegen_error']}", "fail"))
                rows.append([_int(p["target_fps"]), *_fold_row(name, d, cap), gen])
        out += [Block("h3", "fps against the binding resource (estimates)"),
                _table(["Target fps", *_FOLD_COLUMNS, "FINN generates its code"], rows)]
    stages = f.get("stages") or []
    if stages:
        rows = [[s["stage"], _c(_pct(s["argmax_agreement"]), None if s["argmax_agreement"] >= 1 else "fail"),
                 _diff(s.get("max_abs_diff")), s.get("first_divergent_node") or "–"] for s in stages]
        out += [Block("h3", "Parity per lowering stage (vs the QAT model)"),
                _table(["Stage", "Argmax agreement", "max|d|", "First divergent node"], rows)]
        if "fpga_stages" in plot_paths:
            out.append(Block("img", text="FPGA parity per stage", src="plots/fpga_stages.png"))
    return out


_FOLD_COLUMNS = ["Folding", "fps", "Binding resource (% of part)", "LUT", "BRAM_18K", "URAM", "DSP", "Within budget"]


def _binding(used: dict, cap: dict) -> tuple:
    shares = {r: used.get(r, 0) / c for r, c in cap.items() if c}
    worst = max(shares, key=shares.get) if shares else None
    return worst, shares.get(worst)


def _fold_row(name: str, d: dict, cap: dict) -> list:
    if not d.get("est_fps"):
        return [name, _c("does not fit", "fail"), "–", "–", "–", "–", "–", _c("no", "fail")]
    binding, share = d.get("binding"), d.get("binding_share")
    if binding is None:
        binding, share = _binding(d, cap)
    reps = f" ({d['replicas']} instances)" if (d.get("replicas") or 1) > 1 else ""
    return [name + reps, _c(f"{_int(d.get('est_fps'))} (estimate)", "estimate"),
            f"{binding} {_pct(share, 1)}" if binding else "–", *[_int(d.get(r)) for r in ("LUT", "BRAM_18K", "URAM", "DSP")],
            _c("yes", "pass") if d.get("fits") else _c("no", "fail")]


def _device(report: dict, target: str) -> list[Block]:
    out = [Block("h2", TARGETS[target])]
    models = _target_models(report, target)
    if not models:
        return out + [Block("p", f"{target.upper()}: not built.")]
    return out + [Block("ul", items=_device_notes(target, models))]


def _bench(report: dict, plot_paths: dict) -> list[Block]:
    out = [Block("h2", "Throughput")]
    b = report.get("bench")
    if not b or not b.get("results"):
        return out + [Block("p", "Benchmark: not run (make bench).")]
    if b.get("machine"):
        out.append(Block("p", f"Machine: {_machine(b['machine'])}. Estimates are computed, not measured."))
    rows = []
    for r in b["results"]:
        est = r.get("kind") == "estimate"
        ratios = ", ".join(f"{v:.2f}x vs {k}" for k, v in sorted((r.get("ratio_vs") or {}).items()) if v) or "–"
        lat = r.get("latency_ms") or {}
        settings = ", ".join(f"{k}={v}" for k, v in sorted((r.get("settings") or {}).items())) or "–"
        rows.append([r["runtime"], r.get("target") or "–", r.get("precision", "–"), r.get("device", "–"),
                     r.get("mode", "–"), str(r["batch"]), _int(r.get("threads")) if r.get("threads") else "–",
                     _c(_int(r.get("images_per_s")), "estimate" if est else None),
                     *[_c(_num(lat.get(q), 3), "estimate" if est else None) for q in ("p50", "p90", "p99")],
                     _c("estimate", "estimate") if est else "measured", ratios, settings])
    out.append(_table(["Runtime", "Target", "Precision", "Device", "Mode", "Batch", "Threads", "Images/s",
                       "p50 ms", "p90 ms", "p99 ms", "Kind", "Ratio", "Settings"], rows))
    out.append(Block("p", "Latency: per call of one batch (async: one call keeps every infer request busy), "
                          "percentiles over every timed call of every interleaved round, like benchmark_app. "
                          "The FPGA row is FINN's estimate (cycle model at the clock), not a measurement."))
    if "throughput" in plot_paths:
        out.append(Block("img", text="Throughput", src="plots/throughput.png"))
    return out


def _machine(ident) -> str:
    """The machine record of a report or bench file (older files hold a plain string)."""
    return summary(ident) if isinstance(ident, dict) else str(ident)


def build_blocks(report: dict, plot_paths: dict, out_dir: Path | None = None) -> list[Block]:
    """The report as a list of blocks (the single source of report.md and report.html)."""
    title = f"Parity report: {report.get('recipe', '?')}"
    meta = f"{report.get('schema', '?')}, qdeploy {report.get('qdeploy_version', '?')}"
    if report.get("machine"):
        meta += f"; measured on {_machine(report['machine'])}"
    return [Block("h1", title), Block("p", meta), *_verdict(report), *_verdicts(report), *_dataset(report), *_summary(report),
            *_confusion(report),
            *_gates(report), *_plots_section(plot_paths), *_cams(report, out_dir), *_fpga(report, plot_paths), *_device(report, "npu"),
            *_device(report, "gpu"), *_bench(report, plot_paths)]


# ---------------------------------------------------------------------------- Markdown


def _md_cell(c: Cell) -> str:
    t = c.text.replace("|", "\\|").replace("\n", " ")
    return f"**{t}**" if c.status in ("fail", "pass", "strong") else f"*{t}*" if c.status == "estimate" else t


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [f"**{b.text}**" if b.status else b.text, ""]
        elif b.kind == "ul":
            lines += [f"- {i}" for i in b.items] + [""]
        elif b.kind == "img":
            lines += [f"![{b.text}]({b.src})", ""]
        elif b.kind == "table":
            t = b.table
            lines.append("| " + " | ".join(h.replace("|", "\\|") for h in t.headers) + " |")
            lines.append("|" + "|".join("---" for _ in t.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: 4px; }
h2 { border-bottom: 1px solid #eee; padding-bottom: 2px; margin-top: 32px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.pass { color: #1a7f37; font-weight: bold; }
td.fail, p.fail { color: #b00020; font-weight: bold; }
td.fail { background: #fde7ea !important; }
p.pass { color: #1a7f37; font-weight: bold; }
td.estimate { font-style: italic; color: #7a5b00; }
td.strong { font-weight: bold; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #666; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(blocks: list[Block], out_dir: Path) -> str:
    """One self-contained page: inline CSS, images as data URIs, no scripts or links."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f'<p class="{b.status}">{e(b.text)}</p>' if b.status else f"<p>{e(b.text)}</p>")
        elif b.kind == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "img":
            body.append(f'<figure><img alt="{e(b.text)}" src="{_data_uri(out_dir / b.src)}">'
                        f"<figcaption>{e(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            t = b.table
            head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
            rows = "".join("<tr>" + "".join(f'<td class="{c.status}">{e(c.text)}</td>' if c.status
                                            else f"<td>{e(c.text)}</td>" for c in row) + "</tr>" for row in t.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
    title = e(blocks[0].text if blocks else "Parity report")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------- entry points


def render_plots(report: dict, plot_dir: Path) -> dict[str, Path]:
    """Draw every plot the report has data for into plot_dir; remove stale ones of ours."""
    models = dict(_ordered(report.get("models") or {}))
    classes = (report.get("dataset") or {}).get("classes") or []
    op = report.get("operating_point") or {}
    min_agree = next((g["limit"] for g in report.get("gates") or [] if g["gate"] == "argmax_agreement"
                      and g["limit"] < 1), None)
    fpga = report.get("fpga")
    drawn = {
        "confusion": plots.plot_confusion(models, classes, plot_dir / "confusion.png") if classes else None,
        "roc": plots.plot_roc(models, plot_dir / "roc.png", op.get("report_fpr")),
        "pr": plots.plot_pr(models, plot_dir / "pr.png"),
        "agreement": plots.plot_agreement(models, plot_dir / "agreement.png", min_agree),
        "fpga_resources": plots.plot_fpga_resources(fpga, plot_dir / "fpga_resources.png"),
        "fpga_cycles": plots.plot_fpga_cycles(fpga, plot_dir / "fpga_cycles.png"),
        "fpga_stages": plots.plot_fpga_stages(fpga, plot_dir / "fpga_stages.png"),
        "throughput": plots.plot_throughput(report.get("bench"), plot_dir / "throughput.png"),
    }
    for name in PLOT_NAMES:  # a plot from an earlier render whose data is now gone
        if drawn.get(name) is None:
            (plot_dir / f"{name}.png").unlink(missing_ok=True)
    return {k: v for k, v in drawn.items() if v is not None}


def render_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write plots/*.png, report.md and report.html into out_dir.

    Returns {"md": path, "html": path, <plot name>: path, ...}; plot names are those of
    PLOT_NAMES that had data. Needs only report["models"]; every other part is optional.
    """
    out_dir = Path(out_dir)
    if not isinstance(report.get("models"), dict) or not report["models"]:
        raise ValueError("report has no models: nothing to render")
    plot_paths = render_plots(report, out_dir / "plots")
    blocks = build_blocks(report, plot_paths, out_dir)
    md = write_text(out_dir / "report.md", to_markdown(blocks))
    page = write_text(out_dir / "report.html", to_html(blocks, out_dir))
    return {"md": md, "html": page, **plot_paths}


def print_console_summary(report: dict, console=None) -> None:
    """One row per model (key metrics and agreement), then the gates, on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = console or Console(stderr=True)
    t = RichTable(title=f"Parity: {report.get('recipe', '?')}", title_justify="left")
    for col in ("Model", "Runtime / device", "Precision", "Acc @ op (argmax)", "F1", "AP", "AUROC", "Recall@op",
                "Agree vs ref", "max|d| ref", "Agree vs float"):
        t.add_column(col, justify="left" if col in ("Model", "Runtime / device", "Precision") else "right")
    for key, m in _ordered(report["models"]):
        met = m.get("metrics") or {}
        ref, fl = m.get("agreement_reference"), m.get("agreement_float")
        t.add_row(escape(m.get("label", key)), escape(f"{m.get('runtime', '?')} / {m.get('device', '?')}"),
                  escape(m.get("precision", "?")),
                  _beside(m.get("operating_point"), met, "accuracy").replace("argmax ", ""), _num(met.get("f1")),
                  _num(met.get("ap")), _num(met.get("auroc")), _num(met.get("op_recall")), _agree(ref).split(" ")[0], _diff((ref or {}).get("max_abs_diff")),
                  _agree(fl).split(" ")[0])
    console.print(t)
    for b in _verdicts(report)[1:]:
        console.print(escape(b.text))
    gates = report.get("gates") or []
    if not gates:
        console.print("gates: none checked")
        return
    g = RichTable(title="Gates", title_justify="left")
    for col in ("Kind", "Model", "Gate", "Value", "Limit", "Result"):
        g.add_column(col)
    for x in gates:
        g.add_row(x.get("kind", "parity"), escape(x["target"]), escape(x["gate"]), _value(x.get("value")), _value(x.get("limit")),
                  "[bold green]PASS[/]" if x["passed"] else "[bold red]FAIL[/]")
    console.print(g)
    for kind in ("quality", "parity"):
        mine = [x for x in gates if x.get("kind", "parity") == kind]
        bad = sum(not x["passed"] for x in mine)
        if mine:
            console.print(f"[bold red]{kind}: {bad} of {len(mine)} gates FAILED[/]" if bad
                          else f"[bold green]{kind}: all {len(mine)} gates passed[/]")
