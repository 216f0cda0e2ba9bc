"""Which CPU this is, and what that means for INT8 results and speed.

INT8 kernels compute differently on different x86 CPUs (oneDNN inside OpenVINO, MLAS inside
onnxruntime):

- with VNNI (AVX-512 VNNI or AVX-VNNI) or AMX-INT8, a u8 x s8 dot product accumulates in
  int32 (vpdpbusd / tdpbusd): exact, like an NPU or a GPU;
- without them (AVX2 only, or AVX-512 without VNNI), the kernels use vpmaddubsw, which adds
  two u8 x s8 products into a *saturating int16*: with 8-bit weights, pairs above 32767
  clip, and the CPU no longer computes what the NPU will. NNCF's "overflow fix" (7-bit
  weights) is the cure when the artifact is meant to run on such a CPU.

oneDNN honours the environment variable ONEDNN_MAX_CPU_ISA (e.g. AVX2), and so does the
OpenVINO CPU plugin: the tests use it to run the non-VNNI kernels on a VNNI machine.
`identity()` takes that cap into account, so a capped process describes the CPU its
kernels actually use.

Float training differs between CPUs too (the summation order of ATen's and oneDNN's vector
kernels, MKL's code path): ISA_CAPS holds the variables that make a process compute like an
AVX2-only CPU on a bigger one (`qdeploy sweep --isa avx2`).

    identity() -> dict   recorded in build logs, report.json and bench.json
    summary(ident) -> str   one line for a console or a report header
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# oneDNN's ISA names in increasing order (ONEDNN_MAX_CPU_ISA accepts any of them; older
# names are aliases of newer ones).
_ONEDNN_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                 "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
                 "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512",
                 "AVX10_2_512_AMX_2", "ALL", "DEFAULT")
_RANK = {name: i for i, name in enumerate(_ONEDNN_ORDER)}
_RANK.update({"AVX10_1_512": _RANK["AVX512_CORE_FP16"], "AVX10_1_512_AMX": _RANK["AVX512_CORE_AMX"],
              "AVX10_1_512_AMX_FP16": _RANK["AVX512_CORE_AMX_FP16"], "DEFAULT": _RANK["ALL"]})

# the CPU features that change INT8 results or speed, as /proc/cpuinfo (and py-cpuinfo) spell them
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
_LABELS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
           "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX-INT8"}


def _cap_allows(cap: str | None, needed: str) -> bool:
    if not cap:
        return True
    rank = _RANK.get(cap.strip().upper())
    return True if rank is None else rank >= _RANK[needed]


def int8_dot_kernel(features: dict[str, bool], arch: str, cap: str | None = None) -> str:
    """The u8 x s8 dot-product instruction the INT8 kernels use: "amx", "avx512_vnni",
    "avx_vnni" (exact int32 accumulation), "vpmaddubsw" (saturating int16 pairs), or
    "unknown" (not x86)."""
    if arch not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "unknown"
    if features.get("amx_int8") and _cap_allows(cap, "AVX512_CORE_AMX"):
        return "amx"
    if features.get("avx512_vnni") and _cap_allows(cap, "AVX512_CORE_VNNI"):
        return "avx512_vnni"
    if features.get("avx_vnni") and _cap_allows(cap, "AVX2_VNNI"):
        return "avx_vnni"
    return "vpmaddubsw"


def int8_accumulates_exactly(ident: dict) -> bool:
    """True when this CPU's INT8 kernels accumulate u8 x s8 products exactly (no saturation)."""
    return ident["int8_dot"] in ("amx", "avx512_vnni", "avx_vnni")


def _read_cpu() -> tuple[str, str, set[str]]:
    """(model, vendor, flags). Linux: /proc/cpuinfo, read as a file (no subprocess, no CPUID
    code run in-process). Elsewhere: py-cpuinfo (Windows registry, macOS sysctl)."""
    proc = Path("/proc/cpuinfo")
    if proc.is_file():
        fields: dict[str, str] = {}
        for line in proc.read_text(errors="replace").splitlines():
            key, sep, val = line.partition(":")
            if not sep:
                if fields:
                    break  # the first processor's block is enough
                continue
            fields.setdefault(key.strip(), val.strip())
        flags = set((fields.get("flags") or fields.get("Features") or "").lower().split())
        model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or platform.processor()
        if flags:
            return model or "unknown CPU", fields.get("vendor_id", ""), flags
    import cpuinfo

    info = cpuinfo.get_cpu_info()
    flags = {f.lower() for f in info.get("flags", [])}
    # py-cpuinfo spells some flags both ways (avx512vnni / avx512_vnni)
    for short, canonical in (("avx512vnni", "avx512_vnni"), ("avxvnni", "avx_vnni"), ("amxint8", "amx_int8")):
        if short in flags:
            flags.add(canonical)
    return info.get("brand_raw") or platform.processor() or "unknown CPU", info.get("vendor_id_raw") or "", flags


# --isa name -> the environment that caps every kernel library of a process at that ISA
ISA_CAPS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
_FLOAT_CAP_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


@functools.cache
def _cpu() -> tuple[str, str, frozenset[str]]:
    model, vendor, flags = _read_cpu()
    return model, vendor, frozenset(flags)


def identity() -> dict:
    """This machine's CPU, its INT8-relevant features and the kernel they select."""
    model, vendor, flags = _cpu()
    arch = platform.machine().lower()
    features = {f: f in flags for f in FEATURES}
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or None
    return {
        "cpu": model,
        "vendor": vendor,
        "arch": arch,
        "cores": os.cpu_count(),
        "features": features,
        "onednn_max_cpu_isa": cap,
        "int8_dot": int8_dot_kernel(features, arch, cap),
        "float_caps": {v: os.environ[v] for v in _FLOAT_CAP_VARS if os.environ.get(v)},
    }


def summary(ident: dict) -> str:
    """e.g. "Intel(R) Xeon(R) Processor, 2 cores, x86_64 [AVX2 AVX-512 AVX-512 VNNI AMX-INT8];
    INT8 dot product: avx512_vnni (exact)"."""
    feats = " ".join(_LABELS[f] for f in FEATURES if ident.get("features", {}).get(f)) or "none of " + "/".join(
        _LABELS.values())
    kernel = ident.get("int8_dot", "unknown")
    how = {"vpmaddubsw": "saturating int16 pairs", "unknown": "not x86"}.get(kernel, "exact int32")
    cap = f", capped by ONEDNN_MAX_CPU_ISA={ident['onednn_max_cpu_isa']}" if ident.get("onednn_max_cpu_isa") else ""
    floats = "; float kernels capped: " + " ".join(f"{k}={v}" for k, v in ident["float_caps"].items()) \
        if ident.get("float_caps") else ""
    return (f"{ident.get('cpu', '?')}, {ident.get('cores', '?')} cores, {ident.get('arch', '?')} [{feats}]; "
            f"INT8 dot product: {kernel} ({how}{cap}){floats}")
