"""One parity report: the golden float model, the QAT models and every built target on
the same test set, with metrics, agreement, curves, FPGA estimates, benchmarks and gates.

Data first: build/<recipe>/report/report.json (schema in docs/CONTRACTS.md), then
rendered to Markdown, self-contained HTML and PNG plots, and a console table.
"""
from __future__ import annotations

import json
from pathlib import Path

from core import layout, machine
from core.atomic import write_json
from core.console import console
from core.errors import GateFailed, UserError
from reference.inputs import Inputs
from reference.schema import validate_report
from quant import metrics
from reference import twins as tw
from reference.gates import evaluate_gates, failed

REPORT_SCHEMA = "qdeploy.report/1"


def model_entries(ctx: Inputs, twins: list[tw.Twin]) -> dict:
    from core.compare import compare
    from quant.train_seg import pixel_metrics
    from reference.plots import curves_for

    s, r = ctx.splits(), ctx.recipe
    labels = s.test.labels
    by_key = {t.key: t for t in twins}
    out = {}
    for t in twins:
        ref = by_key.get(t.reference) if t.reference else None
        out[t.key] = {
            "label": t.label, "role": t.role, "target": t.target, "runtime": t.runtime, "device": t.device,
            "precision": t.precision, "reference": t.reference,
            "metrics": metrics.evaluate(t.logits, labels, s.ok_index, t.threshold, r.train.report_fpr),
            "operating_point": metrics.at_operating_point(t.logits, labels, s.ok_index, t.threshold),
            "agreement_reference": metrics.agreement(ref.logits, t.logits) if ref is not None else None,
            "agreement_float": metrics.agreement(by_key["float"].logits, t.logits)
            if "float" in by_key and t.key != "float" else None,
            "curves": curves_for(t.logits, labels, s.ok_index),
            "extra": t.extra,
        }
        if t.maps is not None:
            out[t.key]["pixel"] = pixel_metrics(t.maps, *s.test.mask_array())
            if ref is not None and ref.maps is not None:
                out[t.key]["map_agreement"] = compare(t.maps.reshape(len(t.maps), -1), ref.maps.reshape(len(ref.maps), -1))
    return out


def _header(ctx: Inputs) -> dict:
    s, r = ctx.splits(), ctx.recipe
    d = ctx.stage_dir("train")
    qat = json.loads(((d / "qat.json") if (d / "qat.json").is_file() else (d / "float.json")).read_text())
    return {
        "schema": REPORT_SCHEMA, "recipe": r.name, "qdeploy_version": ctx.version, "machine": machine.identity(),
        "dataset": {"classes": list(s.class_names), "ok_index": s.ok_index, "n_test": len(s.test),
                    "notes": list(s.notes), "test_files": [str(Path(p).resolve()) for p in s.test.paths]},
        "operating_point": {"threshold": qat.get("threshold"), "target_recall": r.train.target_recall,
                            "target_fpr": r.train.target_fpr, "report_fpr": r.train.report_fpr},
    }


def target_parity(ctx: Inputs, target: str) -> dict:
    """The parity check at the end of a target's build: its twin(s) against their QAT
    reference and the float model. Writes <stage>/parity.json; a failed gate stops the build."""
    twins = [t for t in tw.golden_cache(ctx)] + tw.TWINS[target](ctx)
    models = model_entries(ctx, twins)
    models = {k: v for k, v in models.items() if k in ("float", "qat") or v["target"] == target}
    gates = evaluate_gates(models, ctx.recipe.gates)
    result = {**_header(ctx), "models": models, "gates": gates}
    write_json(ctx.stage_dir(target) / layout.PARITY, validate_report(result))
    for key, m in models.items():
        if m["role"] == "target":
            ag = m["agreement_reference"]
            console.print(f"{target} parity on {ag['n']} test images vs {m['reference']}: argmax agreement "
                          f"{ag['argmax_agreement']:.4%}, max |d| {ag['max_abs_diff']:.3g} "
                          f"({ag['max_abs_diff_rel']:.2g} of the logit scale); accuracy "
                          f"{m['metrics']['accuracy']:.4f} vs {models[m['reference']]['metrics']['accuracy']:.4f}")
    _raise_on_failure(gates)
    return result


def _raise_on_failure(gates: list[dict]) -> None:
    """Parity first (a twin that does not follow its model), then quality (a model that
    does not find defects): either stops the build with exit 3."""
    for kind in ("parity", "quality"):
        bad = failed(gates, kind)
        if bad:
            more = f" (+{len(bad) - 1} more failed gates)" if len(bad) > 1 else ""
            raise GateFailed(f"{kind} gate failed: {bad[0]['message']}{more}")


def _fpga_section(ctx: Inputs) -> dict | None:
    path = ctx.layout.fpga_summary
    return json.loads(path.read_text()) if path.is_file() else None


def _bench_section(ctx: Inputs) -> dict | None:
    path = ctx.layout.bench_dir / layout.BENCH
    return json.loads(path.read_text()) if path.is_file() else None


def _cam_section(ctx: Inputs, out_dir) -> list[dict]:
    """Grad-CAM overlays of the deployed model (QAT; float for INT8-only models) per defect class."""
    from quant.checkpoint import load_checkpoint
    from reference.cams import write_cam_overlays

    s = ctx.splits()
    twin = {t.key: t for t in ctx.values.get("report_twins", tw.golden_cache(ctx))}
    key = "qat" if "qat" in twin else "float"
    if twin[key].maps is not None:  # a localising model: its own maps, the FPGA's from the integer execution
        from reference.cams import write_map_overlays

        masks, _ = s.test.mask_array()
        entries = []
        for k in (key, "fpga"):
            if k in twin and twin[k].maps is not None:
                entries += write_map_overlays(twin[k].maps, twin[k].label, ctx.test_pixels(), s.test.labels,
                                              twin[k].logits, masks, s.class_names, s.ok_index, out_dir / "cams", k)
        return entries
    model, _ = load_checkpoint(ctx.stage_dir("train") / key)
    return write_cam_overlays(model, twin[key].label, ctx.test_pixels(), s.test.labels, twin[key].logits,
                              s.class_names, s.ok_index, out_dir / "cams")


def build_report(ctx: Inputs) -> dict:
    targets = tw.built_targets(ctx)
    twins = list(tw.golden_cache(ctx))
    for t in targets:
        twins += tw.TWINS[t](ctx)
    ctx.values["report_twins"] = twins
    models = model_entries(ctx, twins)
    report = {**_header(ctx), "targets_built": targets, "models": models, "fpga": _fpga_section(ctx),
              "bench": _bench_section(ctx)}
    fpga = models.get("fpga")
    if fpga and report["fpga"] is not None:
        report["fpga"]["stages"] = fpga["extra"].get("stages", report["fpga"].get("stages", []))
    report["gates"] = evaluate_gates(models, ctx.recipe.gates)
    return report


def run_parity(ctx: Inputs, render_only: bool = False) -> dict:
    from reference.render import print_console_summary, render_report

    out_dir = ctx.layout.report_dir
    if render_only:
        path = out_dir / layout.REPORT
        if not path.is_file():
            raise UserError(f"no report in {out_dir}: run 'make parity' first")
        report = json.loads(path.read_text())
    else:
        if not tw.built_targets(ctx):
            console.print("[yellow]no target built yet: the report holds the float and QAT models only "
                          "(make target=fpga|npu|gpu build)[/yellow]")
        report = build_report(ctx)
        report["cams"] = _cam_section(ctx, out_dir)
        write_json(out_dir / layout.REPORT, validate_report(report))
    paths = render_report(report, out_dir)
    print_console_summary(report, console=console)
    console.print(f"report: {paths['html']} (also {paths['md'].name}, report.json)")
    _raise_on_failure(report["gates"])
    return report
