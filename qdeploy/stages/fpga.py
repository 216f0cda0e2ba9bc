"""Stage `fpga`: the QONNX export -> FINN dataflow design, folded to the recipe's fps on
its part, with every intermediate model checked against the Brevitas model."""
from __future__ import annotations

from core.atomic import write_json
from core.console import console
from core.errors import UserError
from qdeploy.stages.common import qat_checkpoint, test_pixels
from qdeploy.stages.harness import target_parity
from qdeploy.steps import Context

STAGE = "fpga"


def check_part_and_model(ctx: Context):
    """The part exists and FINN can lower the model: checked before any training."""
    from quant.models import check_fpga, create_model, model_info
    from quant.models.registry import list_fpga_models
    from targets.fpga_parts import get_part

    get_part(ctx.recipe.fpga.part)
    info = model_info(ctx.recipe.model.name)
    if not info.fpga_lowerable:
        what = info.description.split(")")[0] + ")" if "(" in info.description else info.name  # e.g. "X (SiLU, SE)"
        raise UserError(f"model.name={info.name} cannot be built for --target fpga: FINN cannot lower {what}; "
                        f"choose one of {', '.join(list_fpga_models())} for fpga, or build {info.name} for npu or gpu")
    m = ctx.recipe.model  # the class count does not change what FINN sees: 2 stands in before the data is read
    check_fpga(create_model(m.name, 2, tuple(ctx.recipe.dataset.size), m.width, m.weight_bits, m.act_bits, m.input_bits))
    check_fps_feasible(ctx)


def check_fps_feasible(ctx: Context):
    """fpga.target_fps within what the dataflow pipeline can stream at all (one pixel a
    cycle through the stem's sliding window, every layer fully parallel): refused before
    training, with the best feasible fps named. Resource limits come later, at folding."""
    from compilers.finn.folding import MAX_REPLICAS
    from targets.feasibility import best_feasible_fps

    r, m = ctx.recipe, ctx.recipe.model
    cfg = dict(name=m.name, in_size=tuple(r.dataset.size), width=m.width, weight_bits=m.weight_bits,
               act_bits=m.act_bits, input_bits=m.input_bits)
    feas = best_feasible_fps(cfg, r.fpga.part, r.fpga.clock_mhz)
    replicas = MAX_REPLICAS if r.fpga.replicas == "auto" else r.fpga.replicas
    if r.fpga.target_fps > replicas * feas.analytic_fps:
        h, w = r.dataset.size
        more = (f" ({replicas} data-parallel instances)" if replicas > 1 else
                "; lower fpga.target_fps, raise fpga.clock_mhz, use a smaller dataset.size or set fpga.replicas "
                "(data-parallel instances)")
        raise UserError(f"fpga.target_fps {r.fpga.target_fps:,.0f} is beyond what {m.name} at {h}x{w} can stream on "
                        f"{feas.part} at {feas.clock_mhz:g} MHz: at most {replicas * feas.analytic_fps:,.0f} fps "
                        f"(bottleneck {feas.analytic_bottleneck}, every layer fully parallel){more}")


def folding_plugin(fpga):
    """Our folding as the recipe's fpga.if_infeasible asks: the best fit, or a refusal."""
    from compilers.finn.folding import fold, fold_best_fit

    return fold if fpga.if_infeasible == "refuse" else fold_best_fit


def parity_pixels(ctx: Context):
    return test_pixels(ctx, limit=ctx.recipe.fpga.parity_images)


def step_lower(ctx: Context):
    """FINN flow with our folding; the flow runs FINN's SetFolding on the unfolded model for comparison."""
    from compilers.finn.flow import lower
    from quant.train import forward_outputs
    from targets.fpga_parts import get_part

    r = ctx.recipe.fpga
    part = get_part(r.part)

    pixels = parity_pixels(ctx)
    model, _ = qat_checkpoint(ctx)
    outputs = forward_outputs(model, pixels, float64=True)  # what FINN's design must reproduce
    reference = outputs if len(outputs) > 1 else outputs[0]  # a two-output model: decision and defect map
    result = lower(ctx.layout.qonnx, ctx.stage_dir(STAGE), part, r.clock_mhz,
                   r.target_fps, r.budget, samples_uint8=pixels, reference_logits=reference,
                   folding=folding_plugin(r),
                   thresholds=r.thresholds, replicas=r.replicas,
                   log=lambda msg: console.print(f"  {msg}"))
    folding = result.notes["folding"]  # the flow's notes: also there when the flow resumed past its folding step
    k = int(folding.get("replicas", 1))  # data-parallel instances: FINN's figures are one instance's
    summary = {**folding["plan"], "setfolding": folding["comparison"]["setfolding"],
               "finn_estimate": {"est_fps": result.est_fps, "est_latency_ms": result.est_latency_ms,
                                 "resources": result.resources},
               "budget_use": {r: k * u for r, u in result.budget_use.items()},
               "continuation": result.continuation,
               "stages": [p.to_dict() for p in result.parity], "bit_exact": result.bit_exact,
               "generated_sources": {k: len(v) for k, v in result.generated_sources.items()}}
    # FINN's own estimate of the final design is the headline (our search's numbers match it),
    # times the data-parallel instances when there are several
    summary["est_fps"] = k * result.est_fps
    summary["resources"] = {r: k * v for r, v in result.resources.items()}
    summary["pareto"] = folding["comparison"].get("pareto", [])
    summary["search_seconds"] = folding.get("search_seconds")
    write_json(ctx.layout.fpga_summary, summary)
    _print_summary(summary)


def warn_shortfall(plan: dict) -> None:
    """The warning of a build whose fps target did not fit (fold_best_fit's `shortfall`)."""
    if plan.get("shortfall"):
        console.print(f"[yellow]warning:[/yellow] fpga.target_fps not met: {plan['shortfall']}; built that best fit "
                      "(fpga.if_infeasible: refuse stops instead)")


def _print_summary(s: dict) -> None:
    cap, res = s["capacity"], s["resources"]
    warn_shortfall(s)
    use = ", ".join(f"{k} {res.get(k, 0):,.0f}/{cap.get(k, 0):,} ({res.get(k, 0) / cap[k]:.0%})" for k in cap if cap.get(k))
    console.print(f"FPGA {s['part']} @ {s['clock_mhz']:g} MHz: estimated {s['est_fps']:,.0f} fps "
                  f"(target {s['target_fps']:,.0f}; FINN's own folding at that target: {s['setfolding']['est_fps']:,.0f} fps, "
                  f"{s['setfolding']['LUT']:,.0f} LUT) — estimates, not hardware measurements")
    console.print(f"  resources (estimate): {use}; budget {s['budget']:.0%}")
    if (s.get("replicas") or 1) > 1:
        console.print(f"  {s['replicas']} data-parallel instances of the dataflow, each "
                      f"{s['instance']['est_fps']:,.0f} fps (estimate); FINN builds one (NEXT_STEPS.txt)")
    worst = [p for p in s["stages"] if not p["exact"]]
    console.print(f"  parity: {len(s['stages'])} stages x {s['stages'][0]['n'] if s['stages'] else 0} test images: "
                  + ("bit-exact at every stage" if not worst else f"{len(worst)} stage(s) differ, first: {worst[0]['stage']}"))


def step_parity(ctx: Context):
    target_parity(ctx, STAGE)


step_parity.inputs = ("gates",)  # a changed gate re-runs this step, not the build before it


PREFLIGHT = [check_part_and_model]
STEPS = [step_lower, step_parity]
