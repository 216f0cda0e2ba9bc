import dataclasses

import pytest

from core.errors import UserError
from targets.fpga_parts import PARTS, get_part, list_parts


def test_catalogue_has_the_boards_we_target():
    assert {"pynq-z1", "pynq-z2", "zcu104", "kv260", "u250"} <= set(list_parts())
    assert list_parts() == sorted(list_parts())


@pytest.mark.parametrize("name, fpga_part", [
    ("pynq-z1", "xc7z020clg400-1"), ("pynq-z2", "xc7z020clg400-1"), ("zcu104", "xczu7ev-ffvc1156-2-e"),
    ("kv260", "xck26-sfvc784-2LV-c"), ("u250", "xcu250-figd2104-2L-e")])
def test_part_strings(name, fpga_part):
    assert get_part(name).fpga_part == fpga_part


def test_part_strings_and_boards_agree_with_finn():
    from finn.util.basic import part_map

    for part in PARTS.values():
        assert part_map[part.finn_board] == part.fpga_part, part.name


def test_capacities_agree_with_finns_platform_tables():
    """FINN's floorplanner counts (finn/util/platforms.py) are what Vivado leaves usable:
    at most the datasheet figure and within 15 % of it (Alveo shells take the rest)."""
    from finn.util.platforms import platforms

    checked = 0
    for part in PARTS.values():
        if part.finn_board not in platforms:
            continue  # FINN has no table for the K26
        slrs = platforms[part.finn_board]().compute_resources
        finn = [sum(slr[i] for slr in slrs) for i in range(5)]  # LUT, FF, BRAM_18K, URAM, DSP
        ours = [part.luts, part.ffs, part.bram18, part.uram, part.dsp]
        for name, f, o in zip(("LUT", "FF", "BRAM_18K", "URAM", "DSP"), finn, ours):
            assert 0.85 * o <= f <= o, (part.name, name, f, o)
        checked += 1
    assert checked == 4


def test_xc7z020_boards_share_one_device_and_have_no_uram():
    z1, z2 = get_part("pynq-z1"), get_part("pynq-z2")
    assert z1.capacity() == z2.capacity() == {"LUT": 53_200, "BRAM_18K": 280, "URAM": 0, "DSP": 220}


def test_lookup_is_case_insensitive():
    assert get_part("ZCU104") is get_part(" zcu104 ") is PARTS["zcu104"]
    assert get_part("KV260").finn_board == "KV260_SOM"


def test_unknown_part_lists_the_valid_names():
    with pytest.raises(UserError) as e:
        get_part("zcu102")
    msg = str(e.value)
    assert "'zcu102'" in msg and "\n" not in msg
    for name in list_parts():
        assert name in msg


def test_parts_are_frozen_and_map_to_finn_shell_flows():
    from finn.builder.build_dataflow_config import ShellFlowType

    part = get_part("u250")
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.luts = 1
    assert part.finn_shell_flow == ShellFlowType.VITIS_ALVEO.value
    assert get_part("kv260").finn_shell_flow == ShellFlowType.VIVADO_ZYNQ.value
    for p in PARTS.values():
        assert p.name == p.name.lower() and p.default_clock_mhz > 0 and p.bram18 % 2 == 0
