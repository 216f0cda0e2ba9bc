"""Continue the same design with Vivado: IP generation, FIFO sizing, stitched IP, bitfile, driver.

Everything up to HLS/RTL source generation runs here without Xilinx tools. The rest
needs Vivado/Vitis HLS, so `write_continuation` leaves in the build output:

- finn_build_config.json: a FINN DataflowBuildConfig holding this design (part, board,
  clock) and the remaining steps, for FINN's own `finn build` command;
- NEXT_STEPS.txt: which steps remain and the exact command.

The model handed over is the hw_codegen stage: its layers are already specialized,
folded and bit-width minimized. FINN's hw_codegen step is repeated first: it reuses
the generated sources when they exist, and regenerates them on a machine where the
recorded paths do not (a copied build directory).

With XILINX_VIVADO set, `run_continuation` runs that command.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from core import layout
from core.atomic import write_text
from core.errors import UserError

# FINN step names (finn.builder.build_dataflow_steps), in order.
VIVADO_STEPS = (
    "step_hw_codegen",  # no-op when the sources from our hw_codegen stage exist
    "step_hw_ipgen",  # Vitis HLS synthesis of each HLS layer
    "step_set_fifo_depths",  # FIFO sizing by RTL simulation (xsim)
    "step_create_stitched_ip",  # one Vivado IP of the whole dataflow graph
    "step_synthesize_bitfile",  # Vivado synthesis, place & route, bitstream (+ .hwh)
    "step_make_driver",  # PYNQ python driver
    "step_deployment_package",  # bitfile + driver in one folder
)


@dataclass(frozen=True)
class Continuation:
    config_path: Path
    model_path: Path
    output_dir: Path
    command: list[str]
    steps: tuple[str, ...]
    replicas: int = 1  # data-parallel instances of the design (the folding's choice)

    def command_line(self) -> str:
        return " ".join(shlex.quote(c) for c in self.command)

    def message(self) -> str:
        steps = "\n".join(f"  {i}. {s}" for i, s in enumerate(self.steps, 1))
        return (
            "FPGA build stopped after HLS/RTL code generation: XILINX_VIVADO is not set (no Vivado here).\n"
            f"On a machine with Vivado/Vitis HLS (and finn-plus installed), these FINN steps continue this design:\n"
            f"{steps}\n"
            f"Command (after sourcing Vivado's settings64.sh):\n"
            f"  {self.command_line()}\n"
            f"Outputs will go to {self.output_dir}: bitfile/, driver/, deploy/, report/."
        ) + (self.replication() if self.replicas > 1 else "")

    def replication(self) -> str:
        return (
            f"\nData-parallel replication: the folding chose {self.replicas} instances of this dataflow, each "
            f"folded for 1/{self.replicas} of the target within 1/{self.replicas} of the budget. FINN builds "
            f"one instance (the stitched IP above); instantiate it {self.replicas} times in the shell, each "
            f"with its own DMA, and send each 1/{self.replicas} of the images. qdeploy's fps and resources "
            f"for this design are {self.replicas} x the one instance's estimate (replication.json)."
        )


def finn_cli() -> str:
    """The `finn` command of this Python environment."""
    exe = Path(sys.executable).with_name("finn")
    return str(exe) if exe.is_file() else "finn"


def write_continuation(cfg, model_path: Path) -> Continuation:
    """Write finn_build_config.json and NEXT_STEPS.txt for the remaining Vivado steps."""
    from finn.builder.build_dataflow_config import DataflowOutputType

    from compilers.finn.steps import dataflow_build_config

    out_dir = Path(cfg.out_dir).resolve()
    vivado_out = out_dir / layout.FPGA_VIVADO_DIR
    finn_cfg = dataflow_build_config(
        cfg,
        output_dir=str(vivado_out),
        steps=list(VIVADO_STEPS),
        generate_outputs=[
            DataflowOutputType.STITCHED_IP,
            DataflowOutputType.BITFILE,
            DataflowOutputType.PYNQ_DRIVER,
            DataflowOutputType.DEPLOYMENT_PACKAGE,
        ],
        auto_fifo_depths=True,
    )
    config_path = out_dir / "finn_build_config.json"
    write_text(config_path, json.dumps(finn_cfg.to_dict(), indent=2, default=str) + "\n")
    command = [
        finn_cli(),
        "build",
        "--batch",
        "--build-path",
        str(Path(cfg.finn_tmp).resolve()),
        "--output",
        str(vivado_out),
        str(config_path),
        str(Path(model_path).resolve()),
    ]
    replicas = int(cfg.notes.get("folding", {}).get("replicas", 1))
    cont = Continuation(config_path, Path(model_path).resolve(), vivado_out, command, VIVADO_STEPS, replicas)
    if replicas > 1:
        write_text(out_dir / "replication.json", json.dumps({
            "replicas": replicas, "instance_model": str(Path(model_path).resolve()),
            "note": "data-parallel instances of one FINN dataflow; FINN builds one, the shell instantiates them"},
            indent=2) + "\n")
    write_text(out_dir / "NEXT_STEPS.txt", cont.message() + "\n")
    return cont


def run_continuation(cont: Continuation, env_extra: dict[str, str],
                     runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Run the remaining FINN steps with Vivado (blocking; takes tens of minutes)."""
    env = dict(os.environ)
    env.update(env_extra)
    proc = runner(cont.command, env=env, cwd=str(cont.config_path.parent))
    if proc.returncode != 0:
        raise UserError(
            f"FINN's Vivado steps failed (exit {proc.returncode}); see {cont.output_dir} and the log above; "
            f"rerun with: {cont.command_line()}"
        )


def remaining_steps_resolvable(steps: Sequence[str] = VIVADO_STEPS) -> list[str]:
    """Names in `steps` FINN's builder does not know (empty when all resolve)."""
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    return [s for s in steps if s not in build_dataflow_step_lookup]
