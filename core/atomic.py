"""Atomic artifacts: write to a temporary path beside the target, then rename.

An interrupted write leaves the previous good file (or none), never half a file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from core.errors import UserError


def _check_writable_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise UserError(f"output directory {directory} is not writable: choose another --build-dir or fix its permissions")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(target: Path) -> UserError:
    return UserError(f"no space left writing {target}: free disk space on the drive of {target.parent} "
                     "(under --build-dir) or choose another --build-dir")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path; on success rename it onto `target`.

    >>> with atomic_path("out/model.onnx") as tmp:
    ...     onnx.save(model, tmp)
    """
    target = Path(target)
    _check_writable_dir(target.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix + ".tmp", dir=target.parent)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise _no_space(target) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; artifacts are ordinary files
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in _NO_SPACE:
            raise _no_space(target) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` as a whole."""
    target = Path(target)
    _check_writable_dir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise _no_space(target) from None
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:  # put the previous good directory back
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in _NO_SPACE:
            raise _no_space(target) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# The names the temporaries above get (tempfile's 8 random characters after ".<target>."):
# what a killed run (kill -9, power loss) leaves behind, and the next run removes.
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[^/]*)?\.tmp$")  # atomic_path
_TEMP_DIR = re.compile(r"^\..+\.([a-z0-9_]{8}|old)$")  # atomic_dir (and its .old), compilers' mkdtemp


def is_stale_temp(path: Path) -> bool:
    """Whether `path` is named like a temporary of atomic_path / atomic_dir."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return bool(_TEMP_DIR.match(path.name))
    return bool(_TEMP_FILE.match(path.name))


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Remove every temporary left under `root` by an interrupted run; returns what was removed.
    Only call it while no other run writes under `root` (qdeploy.build_dir holds a lock)."""
    removed: list[Path] = []
    for top, dirs, files in os.walk(root, onerror=lambda e: None):
        for name in list(dirs):
            p = Path(top) / name
            if is_stale_temp(p):
                shutil.rmtree(p, ignore_errors=True)
                dirs.remove(name)
                removed.append(p)
        for name in files:
            p = Path(top) / name
            if _TEMP_FILE.match(name) and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed
