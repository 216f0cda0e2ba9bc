"""The build as data: each stage is an ordered list of named steps (one module per stage).

Steps are thin: they take what they need from the context, call library functions
(quant -> compilers -> targets -> reference) and leave their artifacts in
`build/<recipe>/<stage>/`. `PLAN` says which stages a command runs; a stage whose inputs
(the recipe sections it reads, and the qdeploy version) are unchanged is skipped.
"""
from __future__ import annotations

from core.targets import NAMES, TARGETS
from qdeploy import __version__
from qdeploy.stages import export, fpga, gpu, npu, train
from qdeploy.steps import Context, run_stage

# stage -> its module (PREFLIGHT, STEPS) and the recipe sections every one of its steps reads;
# a step may read more (its `inputs` attribute, e.g. the gates of a parity step)
STAGES = {"train": train, "export": export, "fpga": fpga, "npu": npu, "gpu": gpu}
COMMON = ("seed", "dataset", "model", "train")
INPUTS = {"train": COMMON, "export": COMMON, **{t: (*COMMON, TARGETS[t].section) for t in NAMES}}

# command -> the stages it runs (a target's build plan comes from the target registry)
PLAN = {"train": ["train"], "export": ["train", "export"], **{t: list(TARGETS[t].stages) for t in NAMES}}


def steps_of(stage: str) -> list:
    return STAGES[stage].STEPS


def preflight_of(stage: str) -> list:
    """A stage's cheap checks (part, model, device): they run before any stage of the plan."""
    return getattr(STAGES[stage], "PREFLIGHT", [])


def step_digests(recipe, stage: str) -> list[str]:
    """One digest per step: the qdeploy version, the stage's sections and the step's own inputs,
    less the keys the step declares it does not read (its `ignores`)."""
    return [f"{__version__}-{recipe.digest(*INPUTS[stage], *getattr(step, 'inputs', ()), ignore=getattr(step, 'ignores', ()))}"
            for step in steps_of(stage)]


def run_plan(ctx: Context, command: str, force: bool = False) -> None:
    stages = PLAN[command]
    # an unknown part, a model FINN cannot lower or a missing device fails in seconds,
    # not after the training of the earlier stages; the target's own checks go first, as
    # they say the most (e.g. why FINN cannot lower a model, not just that it has no QONNX)
    for stage in reversed(stages):
        for check in preflight_of(stage):
            check(ctx)
    upstream_ran = False  # a stage that ran feeds new artifacts to the stages after it: they run again
    for stage in stages:
        upstream_ran |= run_stage(ctx, stage, steps_of(stage), step_digests(ctx.recipe, stage),
                                  force=upstream_ran or (force and stage == stages[-1]))
