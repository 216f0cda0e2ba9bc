"""The --build-dir of a run: checked before anything is written, locked while the run writes,
and cleaned of the temporaries a killed run (kill -9, power loss) left behind.

Every artifact of a build lives under `<build-dir>/<recipe name>/` (the recipe name is one
safe path component, qdeploy.recipe) or in the shared data cache `<build-dir>/_data/`.

Lock: every run holds a shared flock(2) on the build directory while it runs; the stale
temporaries are removed only by a run that gets the lock exclusively, i.e. when no other
run is writing there (a concurrent run's temporaries are not stale). The kernel drops the
lock of a killed process, so a crash never blocks the next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from rich.markup import escape

from core.atomic import remove_stale_temps
from core.console import console
from core.errors import UserError


def check_build_dir(root: Path, recipe_name: str) -> Path:
    """`root / recipe_name` after checking that both can be directories; nothing is created."""
    if not str(root):
        raise UserError("--build-dir is empty: give a folder, e.g. --build-dir build")
    for p in (root, *root.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p.exists() else "is a broken symlink"
                if p == root:
                    raise UserError(f"--build-dir {root} {what}, not a directory: give a folder (it is created if missing)")
                raise UserError(f"--build-dir {root}: {p} {what}, not a directory: choose another --build-dir")
            break
    build = root / recipe_name
    if (build.exists() or build.is_symlink()) and not build.is_dir():
        raise UserError(f"{build} is a file where the build folder of recipe {recipe_name!r} goes: "
                        "move it away or choose another --build-dir")
    return build


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold the build directory for this run; clean stale temporaries when no other run is active."""
    if not root.is_dir():  # created by the run itself: nothing stale in it yet
        yield
        return
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # unreadable: the first write reports it, naming the folder
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another run writes here: its temporaries are not stale
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            removed = remove_stale_temps(root)
            if removed:
                console.print(f"[dim]removed {len(removed)} temporary file(s) left by an interrupted run "
                              f"(e.g. {escape(removed[0].name)})[/dim]", highlight=False)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
