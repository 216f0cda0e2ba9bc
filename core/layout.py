"""Where every artifact of a build lives: one place for stage folders and file names.

    build/<recipe>/<stage>/...      Layout(build_dir) with build_dir = build/<recipe>

Every package that writes or reads an artifact asks this module for its path, so a file
name is written down once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_MARKER = "stage.json"  # written last by the step runner: the stage finished

# train
FLOAT_CHECKPOINT = "float"  # quant.checkpoint base name: float.pt + float.json
QAT_CHECKPOINT = "qat"
# export
QONNX = "model.qonnx.onnx"
# npu and gpu
INT8_CHECKPOINT = "qat_nncf.pt"
OPENVINO_IR = "model.xml"  # + model.bin
QDQ_ONNX = "model.qdq.onnx"
TRT_ENGINE = "model.engine"
TRT_ENGINE_RECORD = "engine.json"
# fpga
FPGA_SUMMARY = "fpga_summary.json"
FPGA_VIVADO_DIR = "vivado"  # FINN's Vivado steps (compilers/finn/continuation.py)
FPGA_DEPLOY_DIR = "deploy"  # vivado/deploy: the deployment package for a PYNQ board
FPGA_DRIVER_DIR = "driver"  # deploy/driver: FINN's PYNQ python driver
FPGA_BITFILE_DIR = "bitfile"  # deploy/bitfile
# parity and bench
PARITY = "parity.json"
REPORT_DIR = "report"
REPORT = "report.json"
BENCH_DIR = "bench"
BENCH = "bench.json"
# predict
PREDICT_DIR = "predict"  # <build>/<recipe>/predict/<target>/
PREDICTIONS = "predictions.csv"
PREDICTIONS_META = "predictions.json"  # the sidecar: runner, device (real or twin), threshold, recipe
OVERLAY_DIR = "overlays"  # <predict dir>/overlays/<image stem>.png
# console: the compilers' own output (FINN, NNCF, OpenVINO: logging, warnings, prints, C-level)
TOOL_LOG = "tool.log"  # <build>/<recipe>/<stage>/tool.log
# README results, generated from report.json and bench.json (tools/readme_results.py)
RESULTS_GENERATED = "RESULTS_GENERATED.md"  # docs/RESULTS_GENERATED.md
RESULTS_SNAPSHOT = "results_snapshot.json"  # docs/results_snapshot.json: the numbers it was made from
DATA_CACHE = "_data"  # beside the recipe folders: generated / decoded datasets, shared by recipes


@dataclass(frozen=True)
class Layout:
    build_dir: Path  # build/<recipe>

    def stage(self, name: str) -> Path:
        return self.build_dir / name

    def finished(self, stage: str) -> bool:
        return (self.stage(stage) / STAGE_MARKER).is_file()

    @property
    def float_checkpoint(self) -> Path:
        return self.stage("train") / FLOAT_CHECKPOINT

    @property
    def qat_checkpoint(self) -> Path:
        return self.stage("train") / QAT_CHECKPOINT

    @property
    def qonnx(self) -> Path:
        return self.stage("export") / QONNX

    def int8_checkpoint(self, stage: str) -> Path:
        return self.stage(stage) / INT8_CHECKPOINT

    @property
    def openvino_ir(self) -> Path:
        return self.stage("npu") / OPENVINO_IR

    @property
    def qdq_onnx(self) -> Path:
        return self.stage("gpu") / QDQ_ONNX

    @property
    def trt_engine(self) -> Path:
        return self.stage("gpu") / TRT_ENGINE

    @property
    def trt_engine_record(self) -> Path:
        return self.stage("gpu") / TRT_ENGINE_RECORD

    @property
    def fpga_summary(self) -> Path:
        return self.stage("fpga") / FPGA_SUMMARY

    @property
    def fpga_deploy(self) -> Path:
        return self.stage("fpga") / FPGA_VIVADO_DIR / FPGA_DEPLOY_DIR

    @property
    def report_dir(self) -> Path:
        return self.build_dir / REPORT_DIR

    @property
    def bench_dir(self) -> Path:
        return self.build_dir / BENCH_DIR

    def tool_log(self, stage: str) -> Path:
        return self.stage(stage) / TOOL_LOG

    def predict_dir(self, target: str) -> Path:
        return self.build_dir / PREDICT_DIR / target

    @property
    def data_cache(self) -> Path:
        return self.build_dir.parent / DATA_CACHE
