"""A build is an ordered list of named steps, grouped in stages.

A step is a plain function `step(ctx) -> None` that reads and writes the shared
context (and the disk: a later step never relies on what an earlier one left in memory
only). `run_stage` runs a stage's steps in order, times each, and writes
`<stage_dir>/stage.json` last with each step's input digest; a stage whose stage.json
carries the same digests is up to date and skipped, and a stage re-runs from the first step
whose inputs changed or that did not finish.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core import machine
from core.atomic import write_json
from core.console import console
from core.layout import STAGE_MARKER, Layout
from core.tool_output import tool_output

STEPS_DONE = "steps_done.json"  # the steps of an unfinished stage that did finish, with their digests

StepFn = Callable[["Context"], None]


@dataclass
class Context:
    """What the steps of one build share: the recipe, its build directory, results."""

    recipe: Any
    build_dir: Path
    values: dict = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(self.build_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.build_dir / stage


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_is_current(stage_dir: Path, digests: Sequence[str]) -> bool:
    marker = stage_dir / STAGE_MARKER
    return marker.is_file() and _read(marker).get("steps") == list(digests)


def run_stage(ctx: Context, stage: str, steps: Sequence[StepFn], digests: Sequence[str], force: bool = False) -> bool:
    """Run `steps` unless the stage is current. Returns True when any step ran.

    digests[i] is the digest of everything step i reads (its stage's recipe sections plus
    the step's own `inputs`, e.g. the gates for a parity step). A stage is current when
    its marker holds the same digests. Otherwise the steps run from the first one whose
    digest changed or that did not finish (STEPS_DONE, written after every step): a gate
    changed in the recipe re-runs the parity step only, an interrupted stage resumes at the
    step it was in (FINN's start_step idiom). `force` re-runs every step.
    """
    if len(digests) != len(steps):
        raise ValueError("one digest per step")
    stage_dir = ctx.stage_dir(stage)
    if not force and stage_is_current(stage_dir, digests):
        console.print(f"[dim]{stage}: up to date ({stage_dir})[/dim]")
        return False
    stage_dir.mkdir(parents=True, exist_ok=True)
    marker, progress = stage_dir / STAGE_MARKER, stage_dir / STEPS_DONE
    done = [] if force else list(_read(marker).get("steps") or _read(progress).get("steps") or [])
    marker.unlink(missing_ok=True)
    times = dict(_read(progress).get("time_per_step_s") or {}) if not force else {}
    keep = 0
    while keep < len(steps) and keep < len(done) and done[keep] == digests[keep]:
        keep += 1
    ident = machine.identity()
    if not ctx.values.get("machine_logged"):
        console.print(f"[dim]machine: {machine.summary(ident)}[/dim]")
        ctx.values["machine_logged"] = True
    for i, step in enumerate(steps):
        name = step.__name__
        if i < keep:
            console.print(f"[dim]{stage} [{i + 1}/{len(steps)}] {name}: up to date[/dim]")
            continue
        log = ctx.layout.tool_log(stage)  # FINN's, NNCF's, OpenVINO's own output (core.tool_output)
        console.print(f"[bold]{stage}[/bold] [{i + 1}/{len(steps)}] {name} [dim](tool output: {log})[/dim]")
        t0 = time.perf_counter()
        with tool_output(log, f"{stage} {name}"):
            step(ctx)
        times[name] = round(time.perf_counter() - t0, 3)
        write_json(progress, {"steps": list(digests[: i + 1]), "time_per_step_s": times})
    write_json(marker, {"steps": list(digests), "time_per_step_s": times, "machine": ident})
    progress.unlink(missing_ok=True)
    return True
