"""A build is an ordered list of named steps, grouped in stages.

A step is a plain function `step(ctx) -> None` that reads and writes the shared
context (and the disk: a later step never relies on what an earlier one left in memory
only). `run_stage` runs a stage's steps in order, times each, and writes
`<stage_dir>/stage.json` last with each step's input digest and the size and hash of every
file the stage left; a stage whose stage.json carries the same digests and whose files are
all there, unchanged, is up to date and skipped, and a stage re-runs from the first step
whose inputs changed or that did not finish.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core import machine
from core.atomic import write_json
from rich.markup import escape

from core.console import console
from core.errors import UserError
from core.layout import STAGE_MARKER, Layout
from core.tool_output import tool_output

STEPS_DONE = "steps_done.json"  # the steps of an unfinished stage that did finish, with their digests
HASH_UP_TO = 64 * 2**20  # outputs up to this size are verified by content, larger ones by size

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


def _files(stage_dir: Path) -> list[Path]:
    out = []
    for top, dirs, files in os.walk(stage_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(top) / f for f in sorted(files) if f not in (STAGE_MARKER, STEPS_DONE) and not f.startswith(".")]
    return out


def _digest(path: Path) -> str | None:
    if path.stat().st_size > HASH_UP_TO:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def stage_outputs(stage_dir: Path) -> dict[str, list]:
    """relative path -> [size, sha256 prefix (None above HASH_UP_TO)] of every file a stage left."""
    return {p.relative_to(stage_dir).as_posix(): [p.stat().st_size, _digest(p)] for p in _files(stage_dir)}


def outputs_changed(stage_dir: Path, recorded) -> str | None:
    """Why the outputs recorded in stage.json no longer verify (None: they do)."""
    if not isinstance(recorded, dict) or not recorded:
        return "stage.json records no outputs"
    for rel, entry in sorted(recorded.items()):
        p = stage_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        try:
            size, digest = entry
            if p.stat().st_size != size or (digest is not None and _digest(p) != digest):
                return f"{rel} changed"
        except (TypeError, ValueError, OSError):
            return f"{rel} cannot be verified"
    return None


def _clear(path: Path) -> None:
    """Remove a marker file; a directory where a marker belongs (not ours) is removed too."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def stage_is_current(stage_dir: Path, digests: Sequence[str]) -> bool:
    marker = stage_dir / STAGE_MARKER
    if not marker.is_file():
        return False
    data = _read(marker)
    return data.get("steps") == list(digests) and outputs_changed(stage_dir, data.get("outputs")) is None


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
    if stage_dir.exists() and not stage_dir.is_dir():
        raise UserError(f"{stage_dir} is a file where the {stage} stage's folder goes: move it away and rerun")
    if not force and stage_is_current(stage_dir, digests):
        console.print(f"[dim]{stage}: up to date ({escape(str(stage_dir))})[/dim]")
        return False
    stage_dir.mkdir(parents=True, exist_ok=True)
    marker, progress = stage_dir / STAGE_MARKER, stage_dir / STEPS_DONE
    finished = _read(marker) if marker.is_file() else {}
    why = outputs_changed(stage_dir, finished.get("outputs")) if finished else None
    if why is not None:  # the stage finished once, but what it wrote is gone or changed: all of it again
        console.print(f"[yellow]{stage}: {escape(why)} since the stage finished: running it again[/yellow]")
        finished = {}
    done = [] if force else list(finished.get("steps") or _read(progress).get("steps") or [])
    _clear(marker)
    if progress.is_dir():
        _clear(progress)
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
    write_json(marker, {"steps": list(digests), "time_per_step_s": times, "machine": ident,
                        "outputs": stage_outputs(stage_dir)})
    progress.unlink(missing_ok=True)
    return True
