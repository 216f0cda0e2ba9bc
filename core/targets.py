"""The one registry of deployment targets: every other place reads its names from here.

    TARGETS["fpga"].label, .section (recipe section), .stages (the build plan), .artifacts
    NAMES = ("fpga", "npu", "gpu")

The functions that act per target live with their layer and are keyed by these names:
the twin that checks it (reference.twins.TWINS), its preflight and steps (qdeploy.stages);
tests assert that each of those covers exactly NAMES.
"""
from __future__ import annotations

from dataclasses import dataclass

from core import layout


@dataclass(frozen=True)
class Target:
    name: str  # CLI --target, recipe section, stage folder
    label: str  # for reports
    compiler: str
    stages: tuple[str, ...]  # the stages `qdeploy build --target NAME` runs, in order
    artifacts: tuple[str, ...]  # the files a finished build leaves in its stage folder

    @property
    def section(self) -> str:
        return self.name


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("fpga", "FPGA (FINN)", "FINN dataflow (finn-plus)", ("train", "export", "fpga"),
               (layout.FPGA_SUMMARY,)),
        Target("npu", "Intel NPU (OpenVINO)", "NNCF INT8 -> OpenVINO IR", ("train", "npu"),
               (layout.INT8_CHECKPOINT, layout.OPENVINO_IR)),
        Target("gpu", "NVIDIA GPU (TensorRT)", "NNCF INT8 -> TensorRT-layout QDQ ONNX", ("train", "gpu"),
               (layout.INT8_CHECKPOINT, layout.QDQ_ONNX, layout.TRT_ENGINE_RECORD)),
    )
}
NAMES: tuple[str, ...] = tuple(TARGETS)
