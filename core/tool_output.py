"""The compilers' own output goes to a log file, our steps to the console.

FINN, NNCF and OpenVINO talk a lot: python logging ("AbsorbScalarBiasIntoMultiThreshold:
Bias not constant ...", one line per node), warnings, bare prints and, from native code or
subprocesses, writes straight to file descriptors 1 and 2. A user reads them as our
failure. `tool_output(log_path)` sends all of it to `log_path` (appended, one header per
entry) for the duration of a step:

- file descriptors 1 and 2 are pointed at the log (os.dup2): C-level writes and child
  processes land there;
- sys.stdout / sys.stderr are the log too (python prints, warnings.showwarning);
- every logging.StreamHandler writing to a terminal stream is pointed at the log;
  loggers without a handler of their own fall back to logging.lastResort, which writes to
  sys.stderr, i.e. the log;
- our console (core.console) keeps writing where it wrote before: the original stderr
  (a duplicate of fd 2 taken before the redirection) or, under pytest's capsys, the
  capture object.

Nesting is allowed (the inner call does nothing).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from core.console import console

_active: list[Path] = []


def _terminal_handlers() -> list[logging.StreamHandler]:
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    out = []
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and id(getattr(h, "stream", None)) in streams:
                out.append(h)
    return out


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def tool_output(log_path: str | os.PathLike, title: str = "") -> Iterator[Path]:
    """Everything but our console goes to `log_path` inside the block."""
    log_path = Path(log_path)
    if _active:
        yield _active[-1]
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n")
    log.flush()
    # where our console wrote before: its own file, else the current sys.stderr; a stream on
    # fd 2 is replaced by a duplicate of fd 2 taken now, before fd 2 points at the log
    pinned, before_file = console._file, console.file  # pinned None: rich follows sys.stderr
    saved_fds: dict[int, int] = {}
    keep = None
    if _fileno(before_file) in (1, 2):
        fd = _fileno(before_file)
        with contextlib.suppress(Exception):
            before_file.flush()
        keep = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(before_file, "encoding", None) or "utf-8",
                         errors="replace")
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved_fds[fd] = os.dup(fd)
            os.dup2(log.fileno(), fd)
    handlers = _terminal_handlers()
    streams = [h.stream for h in handlers]
    saved_sys = sys.stdout, sys.stderr
    console.file = keep or before_file
    sys.stdout = sys.stderr = log
    for h in handlers:
        h.setStream(log)
    _active.append(log_path)
    try:
        yield log_path
    finally:
        _active.pop()
        for h, s in zip(handlers, streams):
            h.setStream(s)
        sys.stdout, sys.stderr = saved_sys
        with contextlib.suppress(Exception):
            log.flush()
        for fd, dup in saved_fds.items():
            os.dup2(dup, fd)
            os.close(dup)
        console.file = pinned
        if keep is not None:
            keep.close()
        log.close()
