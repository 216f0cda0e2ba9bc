"""The recipe: one validated description of a job, read from YAML.

Every section is a pydantic model with `extra="forbid"` and strict types, so a
mistyped key or a wrong type is an error naming the key. Defaults describe the
embedded default job (synthetic 64x64 surfaces, ResNet-8 W4A4, ZCU104 at 200 MHz).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetConfig(_Section):
    """Where the images come from and how they become model inputs."""

    kind: Literal["synthetic", "folder", "kolektor", "severstal", "mvtec", "casting"] = "synthetic"
    path: Optional[str] = None  # required for every kind but synthetic
    size: tuple[int, int] = (64, 64)  # model input (height, width)
    resize: Literal["resize", "letterbox", "tile"] = "resize"
    task: Literal["binary", "type"] = "binary"  # ok/defect, or one class per defect type
    ok_classes: tuple[str, ...] = ("ok",)  # class-folder names that count as ok
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test fractions
    use_official_test: bool = False  # datasets with their own test split (casting)
    dedup: bool = True  # drop exact (and near, where supported) duplicates across splits
    normalize: Literal["none", "stretch"] = "none"  # stretch: per-image 1-99 percentile contrast stretch (host side)
    orient: Literal["keep", "landscape"] = "keep"  # landscape: portrait images turned a quarter for a wide input
    # synthetic only
    num_images: int = Field(3000, ge=20)
    defect_fraction: float = Field(0.25, gt=0, lt=1)
    difficulty: float = Field(0.1, ge=0, le=1)  # 0: obvious defects; 1: many near the noise floor

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"dataset.path is required for dataset.kind={self.kind}")
        if any(s < 8 for s in self.size):
            raise ValueError("dataset.size must be at least 8x8")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError("dataset.split must be three positive fractions summing to 1")
        return self


class ModelConfig(_Section):
    """Which network and how it is quantized."""

    name: str = "resnet8"
    width: float = Field(1.0, gt=0, le=4)
    weight_bits: int = Field(4, ge=2, le=8)
    act_bits: int = Field(4, ge=2, le=8)
    input_bits: int = Field(8, ge=2, le=8)


class TrainConfig(_Section):
    """Float pre-training, then QAT fine-tuning."""

    float_epochs: int = Field(8, ge=0)
    qat_epochs: int = Field(3, ge=1)  # >= 1: Brevitas creates its activation scales in training
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)  # peak rate of float training (AdamW, warm-up then cosine)
    qat_lr: Optional[float] = Field(None, gt=0)  # peak rate of QAT fine-tuning; None: lr / 2
    qat_freeze_bn_after: Optional[int] = Field(None, ge=0)  # QAT epochs before BatchNorm statistics freeze; None: never
    weight_decay: float = Field(1e-4, ge=0)
    loss: Literal["ce", "focal", "class_balanced"] = "ce"
    sampler: Literal["shuffle", "weighted"] = "weighted"
    augment: bool = True
    patience: int = Field(4, ge=1)  # early stopping on validation, in epochs
    target_recall: Optional[float] = Field(0.95, gt=0, le=1)  # operating point...
    target_fpr: Optional[float] = Field(None, gt=0, lt=1)  # ...or this, not both
    report_fpr: float = Field(0.01, gt=0, lt=1)  # recall at this FPR is always reported
    threads: int = Field(1, ge=1)  # torch intra-op threads; 1 is fastest for these small convs on 2 cores
    # segmentation models (model.name segdec): budgets in optimizer steps (quant/train_seg.py)
    float_steps: int = Field(600, ge=1, le=1_000_000)
    qat_steps: int = Field(300, ge=1, le=1_000_000)
    crop_steps: int = Field(0, ge=0, le=1_000_000)  # map-only steps on crops first
    crop_size: int = Field(128, ge=16, le=4096)
    seg_weight: float = Field(1.0, ge=0, le=100)  # weight of the map loss beside the decision loss
    defect_batch_fraction: float = Field(0.5, gt=0, lt=1)  # share of defect images in each batch
    eval_every: int = Field(100, ge=1, le=1_000_000)  # validation every this many steps

    @model_validator(mode="after")
    def _one_operating_point(self):
        if self.target_recall is not None and self.target_fpr is not None:
            raise ValueError("set train.target_recall or train.target_fpr, not both")
        return self


class FpgaConfig(_Section):
    part: str = "zcu104"
    clock_mhz: Optional[float] = Field(None, gt=0)  # None: the board's default clock
    target_fps: float = Field(20000, gt=0)
    budget: float = Field(0.7, gt=0, le=1)  # fraction of LUT/BRAM/URAM/DSP the design may use
    parity_images: Optional[int] = Field(None, ge=1)  # None: the whole test set


class NpuConfig(_Section):
    device: Literal["auto", "npu", "cpu"] = "auto"
    precision_hint: Literal["f32", "default"] = "f32"
    qat_epochs: int = Field(2, ge=0)


class GpuConfig(_Section):
    qat_epochs: int = Field(2, ge=0)
    require_engine: bool = False  # True: a machine without TensorRT is an error


class GateConfig(_Section):
    # parity: does each deployed twin behave like its QAT reference?
    fpga_bit_exact: bool = True
    min_agreement: float = Field(0.999, ge=0, le=1)
    max_recall_drop: float = Field(0.01, ge=0, le=1)
    # quality: does each model find defects on the test set? (better than chance, unless
    # check_quality is false: plumbing tests of untrained models; the report then says "not checked")
    check_quality: bool = True
    min_auroc: Optional[float] = Field(None, ge=0, le=1)
    min_ap: Optional[float] = Field(None, ge=0, le=1)


class Recipe(_Section):
    # the build folder's name under --build-dir: one safe path component, never a path
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    seed: int = Field(0, ge=0, lt=2**32)
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    fpga: FpgaConfig = FpgaConfig()
    npu: NpuConfig = NpuConfig()
    gpu: GpuConfig = GpuConfig()
    gates: GateConfig = GateConfig()

    def digest(self, *sections: str) -> str:
        """Short hash of the named sections, for up-to-date checks of a stage."""
        data = {s: getattr(self, s).model_dump(mode="json") if s != "seed" else self.seed for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "recipe"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{where}' (check its spelling; see recipes/default.yaml for valid keys)"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {msg} (got {first.get('input')!r})"


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = _lists_to_tuples(data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(_one_line(e, source)) from None


def _lists_to_tuples(obj):
    # YAML has no tuples; strict mode would reject a list where a tuple is declared.
    if isinstance(obj, dict):
        return {k: _lists_to_tuples(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe (None: the embedded default) and apply dotted overrides."""
    data: dict = {}
    source = "default recipe"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise UserError(f"recipe {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: a recipe must be a mapping of sections")
        data.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return recipe_from_dict(data, source)
