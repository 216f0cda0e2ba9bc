"""The parity report's schema (docs/CONTRACTS.md), typed and checked on every write.

`validate_report(report)` raises ReportSchemaError (a bug of ours, not a user error) when a
producer writes a report the renderer and the users' tools would misread: a missing key, a
key under another name (the "first_divergence" vs "first_divergent_node" kind of mismatch),
a gate without its kind. Extra keys are allowed where the contract says "extra".
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Comparison(_Open):  # core.compare.compare
    n: int
    argmax_agreement: float
    max_abs_diff: float
    max_abs_diff_rel: float
    logit_scale: float
    exact: bool
    flipped_indices: list[int]
    flipped_margins: list[float]


class ModelEntry(_Strict):
    label: str
    role: Literal["golden", "qat", "target"]
    target: Optional[Literal["fpga", "npu", "gpu"]]
    runtime: str
    device: str
    precision: str
    reference: Optional[str]
    metrics: dict[str, Any]
    agreement_reference: Optional[Comparison]
    agreement_float: Optional[Comparison]
    curves: Optional[dict[str, Any]]
    extra: dict[str, Any]
    pixel: Optional[dict[str, Any]] = None  # a localising model: quant.train_seg.pixel_metrics of its map
    map_agreement: Optional[Comparison] = None  # its map against its reference's map
    # quant.metrics.at_operating_point: the classes decided at the stored threshold (None: no ok class)
    operating_point: Optional[dict[str, Any]] = None


class Gate(_Strict):
    target: str
    gate: str
    kind: Literal["parity", "quality"]
    passed: bool
    value: float
    limit: float
    message: str


class FpgaStage(_Open):
    stage: str
    argmax_agreement: float
    max_abs_diff: float
    max_abs_diff_rel: float
    exact: bool
    first_divergent_node: Optional[str]


class FpgaSection(_Open):
    part: str
    clock_mhz: float
    est_fps: float
    target_fps: float
    resources: dict[str, float]
    capacity: dict[str, float]
    budget: float
    stages: list[FpgaStage]


class Machine(_Strict):
    cpu: str
    vendor: str
    arch: str
    cores: Optional[int]
    features: dict[str, bool]
    onednn_max_cpu_isa: Optional[str]
    int8_dot: str
    float_caps: dict[str, str] = {}  # ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS of the run, when set


class Report(_Open):
    schema_: Literal["qdeploy.report/1"]
    recipe: str
    qdeploy_version: str
    machine: Machine
    dataset: dict[str, Any]
    operating_point: dict[str, Any]
    models: dict[str, ModelEntry]
    gates: list[Gate]
    fpga: Optional[FpgaSection] = None


class ReportSchemaError(RuntimeError):
    """A producer wrote a report that breaks the contract: a bug, with the first problem."""


def validate_report(report: dict) -> dict:
    """The report unchanged, or ReportSchemaError naming the first key that breaks the schema."""
    data = dict(report)
    data["schema_"] = data.pop("schema", None)
    try:
        Report.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).replace("schema_", "schema")
        raise ReportSchemaError(f"report.json breaks its schema at {where}: {first['msg']}") from None
    return report
