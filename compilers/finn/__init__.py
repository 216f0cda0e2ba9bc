"""FINN (finn-plus) compiler: QONNX -> dataflow design with HLS/RTL sources, checked at every stage.

    from compilers.finn import lower
    result = lower("build/default/export/model.qonnx.onnx", "build/default/fpga", part, clock_mhz=200, target_fps=20000,
                   budget=0.7, samples_uint8=test_pixels, reference_logits=logits)

Modules: env (FINN without Vivado), checks (what FINN cannot lower), steps (the named
steps), flow (the step list and `lower`), execute (batched python-mode execution),
parity (per-stage checks), continuation (the Vivado steps).
"""
from compilers.finn.checks import Problem, check_lowerable, find_problems
from compilers.finn.flow import STEPS, FinnResult, lower
from compilers.finn.parity import Stage, StageParity

__all__ = ["lower", "FinnResult", "STEPS", "check_lowerable", "find_problems", "Problem", "Stage", "StageParity"]
