"""The FPGA design on a PYNQ board: FINN's generated driver (deployment package).

    pynq_available(deploy_dir) -> (bool, reason)   the pynq library and the package are here
    PynqRunner(deploy_dir).predict(pixels)         uint8 [N, 1, H, W] -> outputs [N, C]

The deployment package (<fpga stage>/vivado/deploy: bitfile/ + driver/) comes out of FINN's
Vivado steps (compilers/finn/continuation.py), on a machine with Vivado; `qdeploy predict`
is then run on the board itself, where `import pynq` works. Not exercised here (no board):
everywhere else the FPGA's twin, FINN python execution of the same graph, runs instead,
and predict says so.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from core import layout
from core.errors import UserError
from targets.runners import Runner


def pynq_available(deploy_dir: Path) -> tuple[bool, str]:
    deploy_dir = Path(deploy_dir)
    if importlib.util.find_spec("pynq") is None:
        return False, "the pynq library is not installed (not a PYNQ board)"
    driver = deploy_dir / layout.FPGA_DRIVER_DIR
    if not (driver / "driver_base.py").is_file():
        return False, f"no deployment package in {deploy_dir} (FINN's Vivado steps have not run)"
    return True, "PYNQ board with the deployment package"


class PynqRunner(Runner):
    """FINNExampleOverlay of the deployment package: NHWC uint8 in, the graph's output out."""

    def __init__(self, deploy_dir: Path, batch: int = 1):
        ok, reason = pynq_available(deploy_dir)
        if not ok:
            raise UserError(f"cannot run on the FPGA board: {reason}")
        driver = Path(deploy_dir) / layout.FPGA_DRIVER_DIR
        bitfiles = sorted((Path(deploy_dir) / layout.FPGA_BITFILE_DIR).glob("*.bit"))
        if not bitfiles:
            raise UserError(f"no bitfile in {Path(deploy_dir) / layout.FPGA_BITFILE_DIR}: rerun FINN's Vivado steps")
        sys.path.insert(0, str(driver))
        try:
            from driver import io_shape_dict  # FINN's generated driver.py
            from driver_base import FINNExampleOverlay
        finally:
            sys.path.remove(str(driver))
        self.accel = FINNExampleOverlay(bitfile_name=str(bitfiles[0]), platform="zynq-iodma",
                                        io_shape_dict=io_shape_dict, batch_size=batch)
        self.fixed_batch = batch
        self.name, self.device, self.precision = "pynq", "FPGA (PYNQ board)", "integer"

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))  # the dataflow graph streams NHWC

    def _run(self, prepared: np.ndarray) -> np.ndarray:
        out = np.asarray(self.accel.execute(prepared), dtype=np.float32)
        return out.reshape(len(prepared), -1)
