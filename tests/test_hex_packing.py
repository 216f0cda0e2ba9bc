"""compilers.finn.hex_packing gives FINN's own hex strings: element for element against
finn.util.data_packing on every DataType kind it handles, and file for file on FINN's
code generation (PrepareIP) of a folded CNN with MVAU, VVAU, thresholds and a sliding window."""
import copy
from pathlib import Path

import numpy as np
import pytest

from compilers.finn.hex_packing import fast_hex_packing, pack_innermost_dim_as_hex_string as fast
from test_folding import CLOCK, PART, _brevitas_cnn, finn_hw_graph

KINDS = ["BINARY", "BIPOLAR", "TERNARY", "INT2", "UINT3", "INT4", "UINT8", "INT17", "INT32", "UINT32",
         "FIXED<8,4>", "FLOAT32"]


def _values(dt, shape, rng):
    if dt.name == "BIPOLAR":
        v = rng.choice([-1, 1], shape)
    elif dt.is_fixed_point():
        sf = dt.scale_factor()
        v = rng.integers(round(dt.min() / sf), round(dt.max() / sf) + 1, shape) * sf
    elif dt.is_integer():
        v = rng.integers(dt.min(), dt.max() + 1, shape, dtype=np.int64)
    else:
        v = rng.standard_normal(shape)
    return v.astype(np.float32)


def _outcome(fn, *args, **kwargs):
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # the error kind is part of FINN's behaviour
        return type(e), None
    return None, out


@pytest.mark.parametrize("kind", KINDS)
def test_same_strings_and_errors_as_finn(kind):
    from finn.util.data_packing import pack_innermost_dim_as_hex_string as finn
    from qonnx.core.datatype import DataType

    dt, rng = DataType[kind], np.random.default_rng(len(kind))
    for shape in [(5,), (3, 4), (2, 3, 6), (1, 2, 7, 3)]:
        v = _values(dt, shape, rng)
        row_bits = shape[-1] * dt.bitwidth()
        for pad in (row_bits - 1, row_bits, row_bits + 7, 64, 6):
            for reverse in (False, True):
                for prefix in ("0x", ""):
                    want = _outcome(finn, v, dt, pad, reverse_inner=reverse, prefix=prefix)
                    got = _outcome(fast, v, dt, pad, reverse_inner=reverse, prefix=prefix)
                    assert got[0] == want[0], (shape, pad, reverse, prefix)
                    if want[1] is not None:
                        assert got[1].shape == want[1].shape and got[1].dtype == want[1].dtype
                        assert (got[1] == want[1]).all(), (shape, pad, reverse, prefix)


def test_disallowed_value_is_finns_assertion():
    from finn.util.data_packing import pack_innermost_dim_as_hex_string as finn
    from qonnx.core.datatype import DataType

    v = np.array([[1, 2, 3], [0, 9, 1]], np.float32)  # 9 is not UINT2
    assert _outcome(finn, v, DataType["UINT2"], 8)[0] is AssertionError
    assert _outcome(fast, v, DataType["UINT2"], 8)[0] is AssertionError


def _generated(model, workdir, fpga_part):
    """PrepareIP's output files per node, with the node's own code_gen_dir path taken out."""
    from compilers.finn.env import finn_build_dir
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp

    with finn_build_dir(workdir):
        model = model.transform(InsertDWC()).transform(SpecializeLayers(fpga_part)).transform(
            PrepareIP(fpga_part, 1e3 / CLOCK))
    files = {}
    for node in model.graph.node:
        root = Path(getCustomOp(node).get_nodeattr("code_gen_dir_ipgen"))
        for f in sorted(root.rglob("*")):
            if f.is_file():
                files[(node.name, str(f.relative_to(root)))] = f.read_bytes().replace(str(root).encode(), b"@")
    return files


@pytest.mark.parametrize("mem_mode", ["internal_decoupled", "internal_embedded"])
def test_finn_code_generation_writes_the_same_files(tmp_path, mem_mode):
    from compilers.finn.folding import fold

    model = finn_hw_graph(_brevitas_cnn(32, (16,), depthwise=True), 32, tmp_path / "graph")
    result = fold(model, PART, CLOCK, 20000)
    for node in model.graph.node:
        if node.op_type.startswith(("MVAU", "VVAU")):
            for a in node.attribute:
                if a.name == "mem_mode":
                    a.s = mem_mode.encode()
    want = _generated(copy.deepcopy(model), tmp_path / "finn", result.fpga_part)
    with fast_hex_packing():
        got = _generated(copy.deepcopy(model), tmp_path / "fast", result.fpga_part)
    names = {Path(k[1]).name for k in want}  # weights and thresholds, as FINN packs them in this mode
    assert {"internal_decoupled": "memblock.dat", "internal_embedded": "params.h"}[mem_mode] in names
    assert "thresh.h" in names and any(n.startswith("Thresholding_rtl") and n.endswith(".dat") for n in names)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []


def test_finns_function_is_back_after_the_block():
    from finn.custom_op.fpgadataflow import matrixvectoractivation
    from finn.util import data_packing

    before = data_packing.pack_innermost_dim_as_hex_string
    with fast_hex_packing():
        assert matrixvectoractivation.pack_innermost_dim_as_hex_string is fast
        with fast_hex_packing():
            assert data_packing.pack_innermost_dim_as_hex_string is fast
        assert data_packing.pack_innermost_dim_as_hex_string is fast
    assert data_packing.pack_innermost_dim_as_hex_string is before
    assert matrixvectoractivation.pack_innermost_dim_as_hex_string is before


def test_packed_in_chunks_the_same(monkeypatch):
    """Rows are packed a bounded number of bits at a time; the chunk seams change nothing."""
    from finn.util.data_packing import pack_innermost_dim_as_hex_string as finn
    from qonnx.core.datatype import DataType

    import compilers.finn.hex_packing as hp

    v = _values(DataType["INT4"], (7, 11, 8), np.random.default_rng(3))
    monkeypatch.setattr(hp, "_BITS", 100)  # three 32-bit rows per chunk
    assert np.array_equal(fast(v, DataType["INT4"], 32), finn(v, DataType["INT4"], 32))
