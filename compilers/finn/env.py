"""Make FINN (finn-plus) usable as a library on a machine without Vivado.

FINN expects to be started through its `finn` CLI, which builds a global settings
object, checks for Vivado's simulator and exports environment variables. As a library
we need three things, and nothing else:

1. FINN's global settings object (finn.util.settings), with `finn_build_dir` pointing
   inside our own build directory. The object is FINN's global, so setting it is the
   one side effect FINN forces; `finn_build_dir(path)` sets it for the duration of a
   `with` block and restores the previous value.
2. `finn.builder.build_dataflow_steps` imports `finn.xsi.SimEngine` (only for a type
   hint), and `finn.xsi` resolves that name by checking for Vivado. Without Vivado we
   bind a placeholder that raises a clear error if anything ever tries to build an
   RTL simulation.
3. The HLS/RTL library paths inside the installed package (FINN_RTLLIB,
   FINN_CUSTOM_HLS). They live in the settings object; `tool_environment()` returns
   them as environment variables for a child process (the Vivado continuation), we
   never write them into this process's os.environ.

Everything here is idempotent.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from core.errors import UserError

_READY = False


class XsimUnavailable:
    """Placeholder for finn.xsi.SimEngine on a machine without Vivado."""

    def __init__(self, *args, **kwargs):
        raise UserError(
            "this FINN step needs Vivado's xsim RTL simulator: XILINX_VIVADO is not set; "
            "run the remaining steps on a machine with Vivado (see NEXT_STEPS.txt in the build output)"
        )


def vivado_available() -> bool:
    """True when the Vivado environment is set up (XILINX_VIVADO names a directory)."""
    path = os.environ.get("XILINX_VIVADO", "")
    return bool(path) and Path(path).is_dir()


def _package_dir() -> Path:
    import finn

    return Path(finn.__file__).resolve().parent


def ensure_finn() -> None:
    """Initialise FINN's settings and make its builder importable. Idempotent."""
    global _READY
    if _READY:
        return
    import finn.util.settings as fs
    from finn.interface.settings import FINNSettings

    if fs._SETTINGS is None:
        pkg = _package_dir()
        # A settings path that does not exist: FINN then reads no settings file (neither
        # the user's ~/.finn/settings.yaml nor the repository one) and creates no
        # directory, so the result depends only on the installed package.
        settings = FINNSettings.init(
            override_settings_path=pkg / "qdeploy-no-settings.yaml",
            flow_config=pkg / "qdeploy-no-flow.yaml",  # only anchors FINN's relative default
            auto_set_environment_vars=False,
            finn_rtllib=str(pkg / "finn-rtllib"),
            finn_custom_hls=str(pkg / "custom_hls"),
        )
        fs._SETTINGS = settings
    import finn.xsi

    if not vivado_available() and "SimEngine" not in vars(finn.xsi):
        finn.xsi.SimEngine = XsimUnavailable
    import finn.builder.build_dataflow_steps  # noqa: F401  (fails here if the above did not work)

    _READY = True


def settings():
    """FINN's global settings object (after ensure_finn)."""
    ensure_finn()
    import finn.util.settings as fs

    return fs._SETTINGS


@contextlib.contextmanager
def finn_build_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Point FINN's scratch directory (generated code, partitions) at `path` for a block."""
    s = settings()
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    old = s._finn_build_dir
    s.finn_build_dir = path
    try:
        yield path
    finally:
        s._finn_build_dir = old


def tool_environment(build_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment variables a FINN child process (HLS synthesis, Vivado) expects."""
    s = settings()
    env = {"FINN_RTLLIB": str(s.finn_rtllib), "FINN_CUSTOM_HLS": str(s.finn_custom_hls)}
    if build_dir is not None:
        env["FINN_BUILD_DIR"] = str(Path(build_dir).resolve())
    return env
