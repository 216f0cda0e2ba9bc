"""`qdeploy sweep`: train a recipe once per seed and write the mean, spread and worst seed of
every metric, with the machine, into <build>/<recipe>/sweep/<isa>/sweep.json.

Each seed is a `qdeploy train --set seed=N` of its own, in its own build folder
(<build>/<recipe>/sweep/<isa>/seed<N>/), run as a child process: a finished seed is up to date
on the next sweep (only the missing ones train), `--jobs` runs seeds side by side, and
`--isa avx2` runs them under core.machine.ISA_CAPS so that a bigger CPU computes like an
AVX2-only one (the float kernels' summation order changes the training trajectory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from core import machine
from core.atomic import write_json, write_text
from core.console import console
from core.errors import UserError
from core.layout import STAGE_MARKER
from reference.seed_spread import SWEEP_SCHEMA, render_markdown, run_metrics, spread

SWEEP_DIR = "sweep"
SWEEP = "sweep.json"
SWEEP_TABLE = "sweep.md"  # the same as a markdown table (docs/RESULTS.md quotes it)
SEED_LOG = "train.log"
# rows of the console table (every metric is in sweep.json)
_SHOWN = ("test accuracy", "test defect_f1", "test ap", "test auroc", "test pixel dice")


def sweep_dir(build_dir: Path, isa: str) -> Path:
    return build_dir / SWEEP_DIR / isa


def run_sweep(ctx, seeds: list[int], isa: str, jobs: int, recipe_arg: str | None, sets: list[str],
              force: bool = False) -> Path:
    """Train `ctx.recipe` at every seed (children of this process), then aggregate."""
    if isa not in machine.ISA_CAPS:
        raise UserError(f"unknown --isa {isa!r}; valid: {', '.join(machine.ISA_CAPS)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {' '.join(map(str, seeds))}: give distinct seeds, e.g. --seeds 0 1 2")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give 1 or more")
    out = sweep_dir(ctx.build_dir, isa)
    env = {**os.environ, **machine.ISA_CAPS[isa]}
    console.print(f"sweep: {ctx.recipe.name} over seeds {', '.join(map(str, seeds))} ({isa} kernels, {jobs} at a time) "
                  f"in {out}")
    pending, running, failed = list(seeds), {}, []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                running[seed] = _start(seed, out, env, recipe_arg, [*sets], force)
            time.sleep(0.5)
            for seed, (proc, log, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[seed]
                log.close()
                took = time.perf_counter() - t0
                if proc.returncode == 0:
                    console.print(f"sweep: seed {seed} done in {took / 60:.1f} min")
                else:
                    failed.append(seed)
                    console.print(f"[red]sweep: seed {seed} failed (exit {proc.returncode}): {_last_line(out, seed)}[/red]")
    finally:  # Ctrl-C or SIGTERM: the children stop too (each keeps its finished stages)
        for proc, log, _ in running.values():
            proc.terminate()
        for proc, log, _ in running.values():
            proc.wait()
            log.close()
    if failed:
        raise UserError(f"sweep: seed(s) {', '.join(map(str, failed))} failed: see {out}/seed<N>/{SEED_LOG}")
    return write_sweep(ctx, seeds, isa, out)


def _seed_root(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def _start(seed: int, out: Path, env: dict, recipe_arg: str | None, sets: list[str], force: bool):
    root = _seed_root(out, seed)
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "qdeploy", "train", "--build-dir", str(root)]
    cmd += ["--recipe", recipe_arg] if recipe_arg else []
    cmd += ["--force"] if force else []
    for item in [*sets, f"seed={seed}"]:
        cmd += ["--set", item]
    log = open(root / SEED_LOG, "w")
    console.print(f"[dim]sweep: seed {seed}: {' '.join(cmd[1:])} > {root / SEED_LOG}[/dim]")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.perf_counter()


def _last_line(out: Path, seed: int) -> str:
    lines = (_seed_root(out, seed) / SEED_LOG).read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def write_sweep(ctx, seeds: list[int], isa: str, out: Path) -> Path:
    """sweep.json from the seeds' train/metrics.json and stage.json; prints the table."""
    runs, machines, minutes = {}, [], {}
    for seed in seeds:
        train = _seed_root(out, seed) / ctx.recipe.name / "train"
        runs[seed] = run_metrics(json.loads((train / "metrics.json").read_text()))
        marker = json.loads((train / STAGE_MARKER).read_text())
        machines.append(marker["machine"])
        minutes[str(seed)] = round(sum(marker["time_per_step_s"].values()) / 60, 2)
    stats = spread(runs)
    path = out / SWEEP
    sweep = {"schema": SWEEP_SCHEMA, "recipe": ctx.recipe.name, "seeds": seeds, "isa": isa,
             "machine": machines[0], "machines_differ": any(m != machines[0] for m in machines),
             "machine_summary": machine.summary(machines[0]), "train_minutes_by_seed": minutes, "spread": stats}
    write_json(path, sweep)
    write_text(out / SWEEP_TABLE, render_markdown(sweep, _shown(stats)))
    _print_table(ctx.recipe, stats, seeds, machines[0])
    console.print(f"sweep: {path}")
    return path


def _shown(stats: dict) -> tuple[str, ...]:
    return tuple(f"{m} {k}" for m in ("float", "qat") for k in _SHOWN) + tuple(
        sorted(k for k in stats if k.startswith("qat cost")))


def _print_table(r, stats: dict, seeds: list[int], ident: dict) -> None:
    table = Table(title=f"{r.name} over seeds {', '.join(map(str, seeds))} — {machine.summary(ident)}")
    for col in ("metric", "mean", "sd", "min", "max", *[f"seed {s}" for s in seeds]):
        table.add_column(col, justify="left" if col == "metric" else "right")
    label = {"float": "float", "qat": f"W{r.model.weight_bits}A{r.model.act_bits}"}
    for key in _shown(stats):
        if key not in stats:
            continue
        s = stats[key]
        name = key if key.startswith("qat cost") else label[key.split()[0]] + key[len(key.split()[0]):]
        table.add_row(name, *[f"{s[c]:.4f}" for c in ("mean", "sd", "min", "max")],
                      *[f"{s['by_seed'].get(str(seed), float('nan')):.4f}" for seed in seeds])
    console.print(table)

