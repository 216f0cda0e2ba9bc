"""The FPGA parts qdeploy can fold and build for: one frozen dataclass per board.

Capacities are the whole device's, from the vendor datasheets cited beside each entry
(cross-checked against finn/util/basic.py `part_map` for the part strings and
finn/util/platforms.py for the resource counts FINN's own floorplanner uses).
BRAM is counted in 18 Kb halves (`BRAM_18K`), the unit FINN's estimates use: a
datasheet "36 Kb block RAM" is two of them.

On Alveo cards the platform shell takes part of the device (finn/util/platforms.py
`Alveo_NxU250_Platform` sees 1,500,000 LUTs in the user region); the folding budget
(default 70 %) is applied to the datasheet total, which stays below that region.

>>> get_part("ZCU104").fpga_part
'xczu7ev-ffvc1156-2-e'
"""
from __future__ import annotations

from compilers.finn.part import Part
from core.errors import UserError

# XC7Z020: Zynq-7000 SoC Data Sheet: Overview (DS190), Table 1: 53,200 LUTs, 106,400
# flip-flops, 140 x 36 Kb block RAM, 220 DSP slices, no UltraRAM. FINN's Zynq7020
# platform (finn/util/platforms.py) uses the same 53200 / 280 BRAM_18K / 220.
_XC7Z020 = dict(fpga_part="xc7z020clg400-1", family="zynq-7000", luts=53_200, ffs=106_400,
                bram18=2 * 140, uram=0, dsp=220)

_PARTS = (
    # PYNQ boards run FINN's Zynq examples at 100 MHz (synth_clk_period_ns=10.0,
    # FINN's builder default).
    Part(name="pynq-z1", board="PYNQ-Z1", **_XC7Z020, default_clock_mhz=100.0,
         shell="zynq-iodma", finn_board="Pynq-Z1"),
    Part(name="pynq-z2", board="PYNQ-Z2", **_XC7Z020, default_clock_mhz=100.0,
         shell="zynq-iodma", finn_board="Pynq-Z2"),
    # XCZU7EV: Zynq UltraScale+ MPSoC Data Sheet: Overview (DS891), EV devices table:
    # 230,400 CLB LUTs, 460,800 CLB flip-flops, 312 x 36 Kb block RAM, 96 UltraRAM,
    # 1,728 DSP slices. (FINN's ZU7EV_Platform: 230000 / 610 / 92 / 1728, rounded down.)
    Part(name="zcu104", board="ZCU104", fpga_part="xczu7ev-ffvc1156-2-e", family="zynq-ultrascale+",
         luts=230_400, ffs=460_800, bram18=2 * 312, uram=96, dsp=1_728, default_clock_mhz=200.0,
         shell="zynq-iodma", finn_board="ZCU104"),
    # XCK26 (Kria K26 SOM): Kria K26 SOM Data Sheet (DS987), PL resources: 117,120 LUTs,
    # 234,240 flip-flops, 144 x 36 Kb block RAM, 64 UltraRAM, 1,248 DSP slices.
    Part(name="kv260", board="Kria KV260 (K26 SOM)", fpga_part="xck26-sfvc784-2LV-c",
         family="zynq-ultrascale+", luts=117_120, ffs=234_240, bram18=2 * 144, uram=64, dsp=1_248,
         default_clock_mhz=200.0, shell="zynq-iodma", finn_board="KV260_SOM"),
    # XCU250: Alveo U250 Data Center Accelerator Card Data Sheet (DS962), Table 1, and
    # Virtex UltraScale+ overview (DS923, VU13P die): 1,728,000 LUTs, 3,456,000
    # registers, 2,688 x 36 Kb block RAM, 1,280 UltraRAM, 12,288 DSP slices.
    # (FINN's Alveo_NxU250_Platform user region: 4 x [375000, 1152, 320, 2880].)
    Part(name="u250", board="Alveo U250", fpga_part="xcu250-figd2104-2L-e", family="virtex-ultrascale+",
         luts=1_728_000, ffs=3_456_000, bram18=2 * 2_688, uram=1_280, dsp=12_288,
         default_clock_mhz=200.0, shell="alveo", finn_board="U250"),
)

# The one registry: key -> Part.
PARTS: dict[str, Part] = {p.name: p for p in _PARTS}


def list_parts() -> list[str]:
    return sorted(PARTS)


def get_part(name: str) -> Part:
    """The part named `name` (case-insensitive); unknown names raise UserError."""
    key = str(name).strip().lower()
    if key not in PARTS:
        raise UserError(f"unknown FPGA part {name!r}: choose one of {', '.join(list_parts())}")
    return PARTS[key]
