"""INT8 parity that means the same on every x86 CPU.

The machine identity and the choice of parity path are tested by construction (every ISA
combination), and the saturating path of CPUs without VNNI is *run* on any x86 machine by
capping oneDNN's ISA (ONEDNN_MAX_CPU_ISA=AVX2) in a subprocess: OpenVINO's CPU plugin
honours it, so a VNNI/AMX machine executes exactly the kernels an AVX2-only machine has.
On an AVX2-only machine the cap changes nothing and the same assertions hold. The exact
int32 kernels of VNNI/AMX cannot be run where the CPU lacks them; there the exact path
(FakeQuantize as fp32 formula, test_openvino) is what parity uses, and it is the same on both.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from core import machine
from core.compare import one_step_bound
from targets.openvino_device import cpu_int8_kernels_faithful

X86 = platform.machine().lower() in ("x86_64", "amd64")
NONE = dict.fromkeys(machine.FEATURES, False)


def feats(**on):
    return {**NONE, **on}


@pytest.mark.parametrize("features, cap, kernel", [
    (feats(avx2=True), None, "vpmaddubsw"),  # AVX2 only (e.g. AMD Zen 2, Haswell)
    (feats(avx2=True, avx512f=True), None, "vpmaddubsw"),  # AVX-512 without VNNI (Skylake-SP)
    (feats(avx2=True, avx512f=True, avx512_vnni=True), None, "avx512_vnni"),
    (feats(avx2=True, avx_vnni=True), None, "avx_vnni"),  # Alder Lake client cores
    (feats(avx2=True, avx512f=True, avx512_vnni=True, avx_vnni=True, amx_int8=True), None, "amx"),
    (feats(avx2=True, avx512f=True, avx512_vnni=True, amx_int8=True), "AVX512_CORE_VNNI", "avx512_vnni"),
    (feats(avx2=True, avx512f=True, avx512_vnni=True, avx_vnni=True, amx_int8=True), "AVX2_VNNI", "avx_vnni"),
    (feats(avx2=True, avx512f=True, avx512_vnni=True), "AVX2_VNNI", "vpmaddubsw"),  # no AVX-VNNI to fall to
    (feats(avx2=True, avx512f=True, avx512_vnni=True, amx_int8=True), "avx2", "vpmaddubsw"),  # case-insensitive
    (feats(avx2=True, avx512_vnni=True), "NOT_AN_ISA", "avx512_vnni"),  # oneDNN ignores an unknown cap
])
def test_int8_kernel_from_features_and_cap(features, cap, kernel):
    assert machine.int8_dot_kernel(features, "x86_64", cap) == kernel


def test_non_x86_is_unknown_and_not_called_exact():
    assert machine.int8_dot_kernel(feats(), "aarch64") == "unknown"
    ident = {"int8_dot": "unknown"}
    assert not machine.int8_accumulates_exactly(ident)
    assert not cpu_int8_kernels_faithful(ident, overflow_fix=False)
    assert cpu_int8_kernels_faithful(ident, overflow_fix=True)


@pytest.mark.parametrize("kernel, fix, faithful", [
    ("amx", False, True), ("avx512_vnni", False, True), ("avx_vnni", False, True),
    ("vpmaddubsw", False, False), ("vpmaddubsw", True, True),
])
def test_which_cpu_is_a_faithful_npu_stand_in(kernel, fix, faithful):
    assert cpu_int8_kernels_faithful({"int8_dot": kernel}, overflow_fix=fix) is faithful


def test_identity_of_this_machine_is_complete():
    ident = machine.identity()
    assert set(ident) == {"cpu", "vendor", "arch", "cores", "features", "onednn_max_cpu_isa", "int8_dot", "float_caps"}
    assert set(ident["features"]) == set(machine.FEATURES) and ident["cores"] >= 1
    text = machine.summary(ident)
    assert ident["cpu"] in text and ident["int8_dot"] in text
    json.dumps(ident)  # goes into report.json, bench.json and stage.json as it is


def test_one_step_bound_is_step_times_the_largest_row_norm():
    w = np.array([[0.5, -0.25], [1.0, 1.0]])
    # rows 0.75 and 2.0 (+ half an int8 weight step of each row's largest |w|)
    assert one_step_bound(0.01, w) == pytest.approx(0.01 * (2.0 + 2 / 254), rel=1e-4)


# --- the saturating kernels, run on this machine --------------------------------------

CAPPED_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    from core import machine
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner

    job = json.loads(sys.argv[1])
    px = np.load(job["pixels"])
    out = {"int8_dot": machine.identity()["int8_dot"]}
    for name, xml, kernels in job["runs"]:
        runner = OpenVINORunner(xml, select_device("cpu"), precision_hint="f32", batch=16, int8_kernels=kernels)
        np.save(f"{job['dir']}/{name}.npy", runner.predict(px))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def toy_irs(tmp_path_factory):
    """The toy INT8 model of test_nncf_qat as two IRs: for the NPU (no overflow fix) and for
    any CPU (overflow fix), with the NNCF torch reference logits and each one's bound."""
    import torch

    from compilers.openvino_ir import to_openvino_ir
    from quant.nncf_qat import head_input_step, quantize_int8
    from quant.preprocess import to_input
    from targets.runners import TorchRunner
    from test_nncf_qat import SIZE, calib_batches, toy_pixels, trained_tiny

    d = tmp_path_factory.mktemp("isa")
    px = toy_pixels(128, seed=4242)[0]
    np.save(d / "pixels.npy", px)
    out = {"dir": d, "pixels": px}
    for name, fix in (("npu", False), ("cpu", True)):
        q = quantize_int8(trained_tiny(), calib_batches(), "openvino", subset_size=32, overflow_fix=fix)
        xml = to_openvino_ir(q, (1, 1, SIZE, SIZE), d / f"{name}.xml")
        step, weight = head_input_step(q, to_input(torch.from_numpy(px[:1])))
        out[name] = (xml, TorchRunner(q).predict(px), one_step_bound(step, weight.numpy()))
    return out


def run_capped(toy_irs, runs, isa="AVX2"):
    job = {"dir": str(toy_irs["dir"]), "pixels": str(toy_irs["dir"] / "pixels.npy"),
           "runs": [(n, str(x), k) for n, x, k in runs]}
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
    done = subprocess.run([sys.executable, "-c", CAPPED_RUN, json.dumps(job)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return info, {n: np.load(toy_irs["dir"] / f"{n}.npy") for n, _, _ in runs}


@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA names x86 ISAs")
def test_without_vnni_the_exact_path_and_the_overflow_fix_hold_the_bound(toy_irs):
    """Under the AVX2 cap (what an AVX2-only CPU runs): the NPU IR's int8 kernels saturate
    and break the one-step bound; the same IR on the exact path stays within it, and so do
    the int8 kernels of the overflow-fixed IR against that IR's own exact semantics (against
    NNCF's torch model it also differs where a 7-bit weight sits on a rounding tie, which
    OpenVINO and torch break differently: see quant/nncf_qat.py)."""
    npu_xml, npu_ref, npu_bound = toy_irs["npu"]
    cpu_xml, _, cpu_bound = toy_irs["cpu"]
    info, out = run_capped(toy_irs, [("npu_kernels", npu_xml, True), ("npu_exact", npu_xml, False),
                                     ("cpu_kernels", cpu_xml, True), ("cpu_exact", cpu_xml, False)])
    assert info["int8_dot"] == "vpmaddubsw"
    assert np.abs(out["npu_exact"] - npu_ref).max() <= npu_bound
    assert np.abs(out["cpu_kernels"] - out["cpu_exact"]).max() <= cpu_bound
    # u8 x s8 pairs above 32767 clip in int16: many steps, not one (integer arithmetic, the
    # same on every CPU that runs these kernels)
    assert np.abs(out["npu_kernels"] - npu_ref).max() > npu_bound


@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA names x86 ISAs")
def test_exact_path_is_the_same_with_and_without_the_cap(toy_irs):
    from targets.openvino_device import select_device
    from targets.runners import OpenVINORunner

    npu_xml, _, npu_bound = toy_irs["npu"]
    _, out = run_capped(toy_irs, [("exact_capped", npu_xml, False)])
    here = OpenVINORunner(npu_xml, select_device("cpu"), precision_hint="f32", batch=16,
                          int8_kernels=False).predict(toy_irs["pixels"])
    # fp32 convolutions on integer-grid values: only summation order differs between ISAs,
    # so at most an activation on a rounding boundary goes the other way (one step)
    assert np.abs(out["exact_capped"] - here).max() <= npu_bound
    assert (out["exact_capped"].argmax(1) == here.argmax(1)).all()


def test_the_avx2_cap_makes_torch_compute_like_an_avx2_cpu_and_is_recorded():
    """`qdeploy sweep --isa avx2` runs its training under machine.ISA_CAPS["avx2"]: ATen's
    dispatch then picks its AVX2 kernels on any bigger CPU, and the run's identity says so."""
    code = ("import json, torch; from core import machine; "
            "print(json.dumps([torch.backends.cpu.get_cpu_capability(), machine.identity()]))")
    env = {**os.environ, **machine.ISA_CAPS["avx2"]}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    capability, ident = json.loads(out.stdout.strip().splitlines()[-1])
    assert capability == "AVX2"
    assert ident["float_caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert ident["int8_dot"] in ("vpmaddubsw", "unknown")
    assert "float kernels capped: ATEN_CPU_CAPABILITY=avx2" in machine.summary(ident)
