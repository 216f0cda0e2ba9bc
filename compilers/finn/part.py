"""An FPGA part as the FINN compiler consumes it: a frozen dataclass, typed everywhere.

The registry of the parts qdeploy knows (datasheet figures, default clocks) is
targets/fpga_parts.py; the compiler only needs this shape, so it never imports targets.
"""
from __future__ import annotations

from dataclasses import dataclass

# FINN's shell flows (finn.builder.build_dataflow_config.ShellFlowType values).
_FINN_SHELL_FLOW = {"zynq-iodma": "vivado_zynq", "alveo": "vitis_alveo"}


@dataclass(frozen=True)
class Part:
    name: str  # qdeploy's key, lower case (recipe `fpga.part`)
    board: str  # the product, for reports
    fpga_part: str  # the part string FINN/Vivado expect
    family: str
    luts: int
    ffs: int
    bram18: int  # 18 Kb block RAM halves
    uram: int  # 288 Kb UltraRAM blocks
    dsp: int
    default_clock_mhz: float  # used when the recipe sets no clock
    shell: str  # "zynq-iodma" (Zynq + PYNQ driver) or "alveo" (Vitis platform)
    finn_board: str  # FINN's board name (finn.util.basic.part_map key)

    @property
    def finn_shell_flow(self) -> str:
        return _FINN_SHELL_FLOW[self.shell]

    def capacity(self) -> dict[str, int]:
        """Resource capacities under the keys FINN's estimates use."""
        return {"LUT": self.luts, "BRAM_18K": self.bram18, "URAM": self.uram, "DSP": self.dsp}


def require_part(part) -> Part:
    """`part` itself, or TypeError: the compiler takes a Part, never a name (a caller's bug)."""
    if not isinstance(part, Part):
        raise TypeError(f"part must be a compilers.finn.part.Part (targets.fpga_parts.get_part), got {part!r}")
    return part
