"""FINN's `pack_innermost_dim_as_hex_string`, computed with numpy: the same strings.

FINN writes every MVAU/VVAU weight file and threshold table through
finn.util.data_packing.pack_innermost_dim_as_hex_string, which packs each innermost
row value by value with bitstring (array2hexstring). For effnet_lite at width 1.0 that
is millions of bitstring appends per code generation: measured 670 s of a 720 s folding
step under cProfile (2026-12-03, AMD EPYC 2 cores), the code generation of 8 designs.

`pack_innermost_dim_as_hex_string` here returns the identical array (values, shape,
string dtype) for integer, bipolar and fixed-point FINN DataTypes, and raises the same
errors: AssertionError for a value the DataType does not allow, Exception when the row
needs more than `pad_to_nbits` bits. Anything else (float types, rows wider than 62
bits per value, pad widths that are not whole hex digits, empty arrays) goes to FINN's
own function. tests/test_hex_packing.py compares both on every supported kind of input
and a whole PrepareIP output tree.

`fast_hex_packing()` puts it in place of FINN's function, in finn.util.data_packing and
in every loaded finn module that imported it by name, for the duration of a block.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import numpy as np

NAME = "pack_innermost_dim_as_hex_string"
_HEX = np.array(list("0123456789abcdef"))
_MAX_BITS = 62  # per value: two's complement in int64
_BITS = 1 << 22  # bits packed at once (rows x pad): bounds the bit matrix's memory to ~32 MB


_finn_function = None  # FINN's function, held while ours is in its place


def _finn_original():
    if _finn_function is not None:
        return _finn_function
    from finn.util import data_packing

    return getattr(data_packing, NAME)


def pack_innermost_dim_as_hex_string(ndarray, dtype, pad_to_nbits, reverse_inner=False, prefix="0x"):
    """As finn.util.data_packing.pack_innermost_dim_as_hex_string (same arguments, same result)."""
    from qonnx.core.datatype import DataType

    def finn():
        return _finn_original()(ndarray, dtype, pad_to_nbits, reverse_inner=reverse_inner, prefix=prefix)

    arr = ndarray
    if type(arr) is not np.ndarray or arr.dtype not in (np.float32, np.float16):
        arr = np.asarray(arr, dtype=np.float32)
    arr = arr.astype(np.float32, copy=False)  # array2hexstring packs float32 rows
    pad = max(int(pad_to_nbits), 4)
    if arr.ndim == 0 or arr.size == 0 or pad % 4:
        return finn()
    kind = dtype
    if kind == DataType["BIPOLAR"]:
        arr, kind = (arr + 1) / 2, DataType["BINARY"]
    if reverse_inner:
        arr = np.flip(arr, -1)
    bw = kind.bitwidth()
    if kind.is_fixed_point():
        arr, kind = arr / kind.scale_factor(), DataType["INT" + str(bw)]
    if not kind.is_integer() or bw > _MAX_BITS:
        return finn()
    n = arr.shape[-1]
    allowed = np.asarray(kind.allowed(arr), dtype=bool)
    # FINN checks a row's values before its width, row by row: the first row decides
    if n * bw > pad:
        if allowed.reshape(-1, n)[0].all():
            raise Exception("Number of bits is greater than pad_to_nbits")
        raise AssertionError("This value is not permitted by chosen dtype.")
    if not allowed.all():
        raise AssertionError("This value is not permitted by chosen dtype.")

    rows = arr.reshape(-1, n)
    digits = pad // 4
    out = np.empty(rows.shape[0], dtype=f"<U{digits}")
    shifts = np.arange(bw - 1, -1, -1, dtype=np.int64)
    weights = np.array([8, 4, 2, 1], dtype=np.uint8)
    step = max(1, _BITS // pad)
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step].astype(np.int64) & ((1 << bw) - 1)  # two's complement
        bits = ((chunk[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(len(chunk), n * bw)
        bits = np.concatenate([np.zeros((len(chunk), pad - n * bw), np.uint8), bits], axis=1)
        nibbles = bits.reshape(len(chunk), digits, 4) @ weights
        out[start:start + len(chunk)] = np.ascontiguousarray(_HEX[nibbles]).view(f"<U{digits}").ravel()
    return np.char.add(prefix, out).astype(f"<U{len(prefix) + digits}").reshape(arr.shape[:-1])


@contextlib.contextmanager
def fast_hex_packing() -> Iterator[None]:
    """FINN packs hex strings with `pack_innermost_dim_as_hex_string` from here within the block."""
    import finn.custom_op.fpgadataflow.hls  # noqa: F401  (the node modules that import it by name)
    import finn.custom_op.fpgadataflow.rtl  # noqa: F401
    from finn.util import data_packing

    global _finn_function
    original = getattr(data_packing, NAME)
    if original is pack_innermost_dim_as_hex_string:  # nested
        yield
        return
    swapped = [m for name, m in list(sys.modules.items())
               if name.startswith("finn") and getattr(m, NAME, None) is original]
    _finn_function = original
    try:
        for module in swapped:
            setattr(module, NAME, pack_innermost_dim_as_hex_string)
        yield
    finally:
        for module in swapped:
            setattr(module, NAME, original)
        _finn_function = None
