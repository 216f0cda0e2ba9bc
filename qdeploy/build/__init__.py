"""The build as data: each stage is an ordered list of named steps (one module per stage).

Steps are thin: they take what they need from the context, call library functions
(quant -> compilers -> targets -> reference) and leave their artifacts in
`build/<recipe>/<stage>/`. `PLAN` says which stages a command runs; a stage whose inputs
(the recipe sections it reads, and the qdeploy version) are unchanged is skipped.
"""
from __future__ import annotations

from importlib import import_module

from qdeploy import __version__
from qdeploy.steps import Context, run_stage

# stage -> the recipe sections its result depends on
INPUTS = {
    "train": ("seed", "dataset", "model", "train"),
    "export": ("seed", "dataset", "model", "train"),
    "fpga": ("seed", "dataset", "model", "train", "fpga"),
    "npu": ("seed", "dataset", "model", "train", "npu"),
    "gpu": ("seed", "dataset", "model", "train", "gpu"),
}

PLAN = {
    "train": ["train"],
    "export": ["train", "export"],
    "fpga": ["train", "export", "fpga"],
    "npu": ["train", "npu"],
    "gpu": ["train", "gpu"],
}


def steps_of(stage: str) -> list:
    return import_module(f"qdeploy.build.{stage}").STEPS


def preflight_of(stage: str) -> list:
    """A stage's cheap checks (part, model, device): they run before any stage of the plan."""
    return getattr(import_module(f"qdeploy.build.{stage}"), "PREFLIGHT", [])


def stage_digest(recipe, stage: str) -> str:
    return f"{__version__}-{recipe.digest(*INPUTS[stage])}"


def run_plan(ctx: Context, command: str, force: bool = False) -> None:
    stages = PLAN[command]
    # an unknown part, a model FINN cannot lower or a missing device fails in seconds,
    # not after the training of the earlier stages; the target's own checks go first, as
    # they say the most (e.g. why FINN cannot lower a model, not just that it has no QONNX)
    for stage in reversed(stages):
        for check in preflight_of(stage):
            check(ctx)
    for stage in stages:
        run_stage(ctx, stage, steps_of(stage), stage_digest(ctx.recipe, stage), force=force and stage == stages[-1])
