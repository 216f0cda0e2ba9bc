"""What the steps of every stage look up: the data splits, model arguments, test pixels,
the trained checkpoints. Cached in the build context so each is loaded once."""
from __future__ import annotations

import numpy as np
from rich.markup import escape

from core.console import console
from qdeploy.steps import Context

def splits(ctx: Context):
    if "splits" not in ctx.values:
        from quant.data.splits import load_splits

        r = ctx.recipe
        s = ctx.values["splits"] = load_splits(r.dataset, r.seed, ctx.layout.data_cache)
        console.print(escape(f"data: {r.dataset.kind} {'x'.join(map(str, r.dataset.size))}, classes {list(s.class_names)}, "
                             f"train/val/test {len(s.train)}/{len(s.val)}/{len(s.test)}"))
        for note in s.notes:  # file names in notes are text, never rich markup
            console.print(f"[yellow]data: {escape(note)}[/yellow]")
    return ctx.values["splits"]


def model_args(ctx: Context, quantized: bool) -> dict:
    r, s = ctx.recipe, splits(ctx)
    m = r.model
    args = dict(name=m.name, num_classes=len(s.class_names), in_size=tuple(r.dataset.size), width=m.width,
                weight_bits=m.weight_bits, act_bits=m.act_bits, input_bits=m.input_bits, quantized=quantized,
                edge_weight_bits=m.edge_weight_bits)
    return {**args, "weight_scale": m.weight_scale} if quantized else args


def test_pixels(ctx: Context, limit: int | None = None) -> np.ndarray:
    """The test set as uint8 [N,1,H,W] (the same images, in the same order, for every target)."""
    from quant.data.imageset import stack_pixels

    return stack_pixels(splits(ctx).test, limit)


def qat_checkpoint(ctx: Context):
    from quant.checkpoint import load_checkpoint

    if "qat" not in ctx.values:
        ctx.values["qat"] = load_checkpoint(ctx.layout.qat_checkpoint)
    return ctx.values["qat"]
