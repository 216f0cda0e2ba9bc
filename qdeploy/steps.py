"""A build is an ordered list of named steps, grouped in stages.

A step is a plain function `step(ctx) -> None` that reads and writes the shared
context. `run_stage` runs a stage's steps in order, times each, and writes
`<stage_dir>/stage.json` last; a stage whose stage.json carries the same input digest
is up to date and skipped, so an interrupted build resumes at the first stage that did
not finish.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from core import machine
from qdeploy.atomic import write_json

# a log file or CI gets wide tables instead of rich's 80-column default
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)

StepFn = Callable[["Context"], None]


@dataclass
class Context:
    """What the steps of one build share: the recipe, its build directory, results."""

    recipe: Any
    build_dir: Path
    values: dict = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.build_dir / stage


def stage_is_current(stage_dir: Path, digest: str) -> bool:
    marker = stage_dir / "stage.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False


def run_stage(ctx: Context, stage: str, steps: Sequence[StepFn], digest: str, force: bool = False) -> bool:
    """Run `steps` unless the stage is current. Returns True when the steps ran."""
    stage_dir = ctx.stage_dir(stage)
    if not force and stage_is_current(stage_dir, digest):
        console.print(f"[dim]{stage}: up to date ({stage_dir})[/dim]")
        return False
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "stage.json").unlink(missing_ok=True)
    ident = machine.identity()
    if not ctx.values.get("machine_logged"):
        console.print(f"[dim]machine: {machine.summary(ident)}[/dim]")
        ctx.values["machine_logged"] = True
    times = {}
    for i, step in enumerate(steps, 1):
        name = step.__name__
        console.print(f"[bold]{stage}[/bold] [{i}/{len(steps)}] {name}")
        t0 = time.perf_counter()
        step(ctx)
        times[name] = round(time.perf_counter() - t0, 3)
    write_json(stage_dir / "stage.json", {"digest": digest, "time_per_step_s": times, "machine": ident})
    return True
