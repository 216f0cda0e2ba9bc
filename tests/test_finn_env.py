"""compilers.finn.env: FINN importable without Vivado, no side effects beyond FINN's settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compilers.finn import env
from core.errors import UserError


def test_fresh_process_imports_finn_builder_without_vivado(tmp_path):
    """In a clean interpreter: builder importable, idempotent, no FINN_* env vars, no ~/.finn."""
    code = """
import json, os
from compilers.finn import env
env.ensure_finn(); env.ensure_finn()
import finn.builder.build_dataflow_steps, finn.xsi
print(json.dumps({"sim": finn.xsi.SimEngine.__name__,
                  "env": sorted(k for k in os.environ if k.startswith("FINN")),
                  "rtllib": env.settings().finn_rtllib}))
"""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FINN", "XILINX"))}
    environ["HOME"] = str(tmp_path)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=environ, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["sim"] == "XsimUnavailable" and info["env"] == []
    assert Path(info["rtllib"]).is_dir() and Path(info["rtllib"]).name == "finn-rtllib"
    assert not (tmp_path / ".finn").exists()


def test_xsim_placeholder_fails_loudly():
    with pytest.raises(UserError, match="XILINX_VIVADO is not set"):
        env.XsimUnavailable()


def test_build_dir_is_scoped(tmp_path):
    before = env.settings().finn_build_dir
    with env.finn_build_dir(tmp_path / "b") as p:
        from finn.util.basic import make_build_dir

        made = Path(make_build_dir("probe_"))
        assert p == (tmp_path / "b").resolve() and made.parent == p
    assert env.settings().finn_build_dir == before


def test_tool_environment_points_into_the_package():
    e = env.tool_environment("/tmp/x")
    assert Path(e["FINN_CUSTOM_HLS"]).is_dir() and Path(e["FINN_RTLLIB"]).is_dir()
    assert e["FINN_BUILD_DIR"] == "/tmp/x"
