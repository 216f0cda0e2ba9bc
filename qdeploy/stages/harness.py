"""What the reference harness receives from a build: reference.inputs.Inputs for a context."""
from __future__ import annotations

from qdeploy import __version__
from qdeploy.stages.common import splits
from qdeploy.stages.int8 import load_int8
from qdeploy.steps import Context
from reference.inputs import Inputs


def reference_inputs(ctx: Context) -> Inputs:
    """The recipe, the artifact layout, the splits and the INT8 loader of this build; golden
    logits computed by one parity step are shared with the next through ctx.values."""
    return Inputs(recipe=ctx.recipe, layout=ctx.layout, splits=lambda: splits(ctx),
                  load_int8=lambda stage: load_int8(ctx, stage), version=__version__, values=ctx.values)


def target_parity(ctx: Context, target: str) -> dict:
    """The parity step of a target's stage (reference.parity.target_parity on this build)."""
    from reference.parity import target_parity as check

    return check(reference_inputs(ctx), target)
