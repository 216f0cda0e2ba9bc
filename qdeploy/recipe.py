"""The recipe: one validated description of a job, read from YAML.

Every section is a pydantic model with `extra="forbid"` and strict types, so a
mistyped key or a wrong type is an error naming the key. Defaults describe the
embedded default job (synthetic 64x64 surfaces, ResNet-8 W4A4, ZCU104 at 200 MHz).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UserError

# memory bounds: what one image, one training batch and the synthetic dataset may hold
MAX_SIDE = 4096
MAX_PIXELS = 2**20  # height x width of the model input (1 Mpixel, e.g. 1024x1024 or 512x1600 strips)
MAX_BATCH_PIXELS = 2**23  # train.batch_size x height x width (e.g. 128 x 256x256)
MAX_SYNTHETIC_PIXELS = 2**31  # dataset.num_images x height x width of a generated dataset
MAX_EPOCHS = 1000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the build folder under --build-dir: one safe component


class _Section(BaseModel):
    # allow_inf_nan=False: every float is finite (an inf fps or a NaN split is an error)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DatasetConfig(_Section):
    """Where the images come from and how they become model inputs."""

    kind: Literal["synthetic", "folder", "kolektor", "severstal", "mvtec", "casting"] = "synthetic"
    path: Optional[str] = Field(None, max_length=4096)  # required for every kind but synthetic
    size: tuple[int, int] = (64, 64)  # model input (height, width)
    resize: Literal["resize", "letterbox", "tile"] = "resize"
    task: Literal["binary", "type"] = "binary"  # ok/defect, or one class per defect type
    ok_classes: tuple[str, ...] = Field(("ok",), max_length=64)  # class-folder names that count as ok
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test fractions
    use_official_test: bool = False  # datasets with their own test split (casting)
    dedup: bool = True  # drop exact (and near, where supported) duplicates across splits
    normalize: Literal["none", "stretch"] = "none"  # stretch: per-image 1-99 percentile contrast stretch (host side)
    orient: Literal["keep", "landscape"] = "keep"  # landscape: portrait images turned a quarter for a wide input
    # a folder of Pascal VOC .xml box files (<image name>.xml, e.g. NEU-DET's annotations/): where
    # an image has no pixel mask, its boxes' rectangles are its mask for mask-supervised models
    boxes: Optional[str] = Field(None, max_length=4096)
    # synthetic only
    num_images: int = Field(3000, ge=20, le=1_000_000)
    defect_fraction: float = Field(0.25, gt=0, lt=1)
    difficulty: float = Field(0.1, ge=0, le=1)  # 0: obvious defects; 1: many near the noise floor

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"dataset.path is required for dataset.kind={self.kind}")
        h, w = self.size
        if not (8 <= h <= MAX_SIDE and 8 <= w <= MAX_SIDE):
            raise ValueError(f"dataset.size must be [height, width] with each side in [8, {MAX_SIDE}] (got {h}x{w})")
        if h * w > MAX_PIXELS:
            raise ValueError(f"dataset.size {h}x{w} is {h * w:,} pixels per image, more than {MAX_PIXELS:,}: "
                             "use dataset.resize: tile, or a smaller size")
        if not all(math.isfinite(f) for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"dataset.split must be three positive fractions summing to 1 (got {list(self.split)})")
        return self

    @field_validator("path", "boxes")
    @classmethod
    def _plain_path(cls, v, info):
        if v is not None and (not v.strip() or any(ord(c) < 32 for c in v)):
            raise ValueError(f"dataset.{info.field_name} must be a non-empty path without control characters (NUL, newline)")
        return v

    @field_validator("ok_classes")
    @classmethod
    def _class_names(cls, v):
        bad = [c for c in v if not c or len(c) > 255 or "/" in c or "\\" in c or any(ord(ch) < 32 for ch in c)]
        if bad:
            raise ValueError(f"dataset.ok_classes holds {bad[0]!r}: each must be a class-folder name")
        return v


class ModelConfig(_Section):
    """Which network and how it is quantized."""

    name: str = Field("resnet8", min_length=1, max_length=64)
    width: float = Field(1.0, gt=0, le=4)
    weight_bits: int = Field(4, ge=2, le=8)
    act_bits: int = Field(4, ge=2, le=8)
    input_bits: int = Field(8, ge=2, le=8)
    # weight bits of the first conv and of the classifier (None: weight_bits): 8 keeps the two
    # layers QAT is most sensitive to near float, for a small share of the FPGA's resources
    edge_weight_bits: Optional[int] = Field(None, ge=2, le=8)
    # per-channel weight scales of the QAT model: "max" (max |w| of the channel) or "learned"
    # (trained in QAT, starting from that max; quant/models/layers.py)
    weight_scale: Literal["max", "learned"] = "max"


class TrainConfig(_Section):
    """Float pre-training, then QAT fine-tuning."""

    float_epochs: int = Field(8, ge=0, le=MAX_EPOCHS)
    qat_epochs: int = Field(3, ge=1, le=MAX_EPOCHS)  # >= 1: Brevitas creates its activation scales in training
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1)  # peak rate of float training (AdamW, warm-up then cosine)
    qat_lr: Optional[float] = Field(None, gt=0, le=1)  # peak rate of QAT fine-tuning; None: lr / 2
    # QAT epochs (steps, for the step-budget segmentation models) before BatchNorm statistics freeze; None: never
    qat_freeze_bn_after: Optional[int] = Field(None, ge=0, le=1_000_000)
    # QAT learns from the float model too (knowledge distillation, Hinton et al. 2015): the loss is
    # (1 - qat_distill) x the label loss + qat_distill x T^2 x KL(float || QAT) at temperature T
    qat_distill: float = Field(0.0, ge=0, le=1)
    # decay per step of the weight average that is validated and kept (quant/weight_average.py),
    # float training and QAT; 0: the raw weights
    ema: float = Field(0.0, ge=0, lt=1)
    qat_ema: float = Field(0.0, ge=0, lt=1)
    qat_distill_temperature: float = Field(2.0, gt=0, le=100)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    loss: Literal["ce", "focal", "class_balanced"] = "ce"
    sampler: Literal["shuffle", "weighted"] = "weighted"
    augment: bool = True
    patience: int = Field(4, ge=1, le=MAX_EPOCHS)  # early stopping on validation, in epochs
    target_recall: Optional[float] = Field(0.95, gt=0, le=1)  # operating point...
    target_fpr: Optional[float] = Field(None, gt=0, lt=1)  # ...or this, not both
    report_fpr: float = Field(0.01, gt=0, lt=1)  # recall at this FPR is always reported
    threads: int = Field(1, ge=1, le=256)  # torch intra-op threads; 1 is fastest for these small convs on 2 cores
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
    part: str = Field("zcu104", min_length=1, max_length=64)
    clock_mhz: Optional[float] = Field(None, gt=0, le=1000)  # None: the board's default clock
    target_fps: float = Field(40000, gt=0, le=1e9)
    # a target that does not fit the part's budget (found at folding, after training): build the
    # fastest design that fits and say so (best_fit, as FINN's SetFolding), or stop (refuse).
    # A target beyond what the pipeline can stream at all is refused before training either way.
    if_infeasible: Literal["best_fit", "refuse"] = "best_fit"
    budget: float = Field(0.7, gt=0, le=1)  # fraction of LUT/BRAM/URAM/DSP the design may use
    # activations as Thresholding layers of their own (lets MVAUs be FINN's DSP-packing RTL MVU)
    # or inside the MVAUs; auto: standalone on UltraScale+/Versal, embedded on Zynq-7000
    thresholds: Literal["auto", "standalone", "embedded"] = "auto"
    # data-parallel instances of the dataflow (K x the fps and resources of one), or auto:
    # one if it reaches target_fps, else the fewest that do (one pipeline reads a pixel a cycle)
    replicas: Union[Literal["auto"], Annotated[int, Field(ge=1, le=16)]] = 1
    parity_images: Optional[int] = Field(None, ge=1, le=1_000_000)  # None: the whole test set


class NpuConfig(_Section):
    device: Literal["auto", "npu", "cpu"] = "auto"
    precision_hint: Literal["f32", "default"] = "f32"
    qat_epochs: int = Field(2, ge=0, le=MAX_EPOCHS)


class GpuConfig(_Section):
    qat_epochs: int = Field(2, ge=0, le=MAX_EPOCHS)
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
    name: str = Field("default", pattern=NAME_PATTERN)
    seed: int = Field(0, ge=0, lt=2**32)
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    fpga: FpgaConfig = FpgaConfig()
    npu: NpuConfig = NpuConfig()
    gpu: GpuConfig = GpuConfig()
    gates: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _memory_bounds(self):
        h, w = self.dataset.size
        batch = self.train.batch_size * h * w
        if batch > MAX_BATCH_PIXELS:
            raise ValueError(f"train.batch_size x dataset.size = {self.train.batch_size} x {h}x{w} = {batch:,} pixels "
                             f"per batch, more than {MAX_BATCH_PIXELS:,}: lower train.batch_size or dataset.size")
        total = self.dataset.num_images * h * w
        if self.dataset.kind == "synthetic" and total > MAX_SYNTHETIC_PIXELS:
            raise ValueError(f"dataset.num_images x dataset.size = {self.dataset.num_images:,} x {h}x{w} = {total:,} "
                             f"pixels to generate, more than {MAX_SYNTHETIC_PIXELS:,}: lower dataset.num_images or dataset.size")
        return self

    def digest(self, *sections: str, ignore: tuple[str, ...] = ()) -> str:
        """Short hash of the named sections, for up-to-date checks of a stage; `ignore` names
        keys ("train.qat_lr") a step does not read, so changing them does not re-run it."""
        data = {s: getattr(self, s).model_dump(mode="json") if s != "seed" else self.seed for s in sections}
        for key in ignore:
            section, _, field = key.partition(".")
            data.get(section, {}).pop(field, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _field(loc: tuple):
    """The FieldInfo at a validation-error location (None when it is not a plain field)."""
    model, info = Recipe, None
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a tuple: the tuple's field
        fields = getattr(model, "model_fields", None) if model is not None else None
        if not fields or part not in fields:
            return None
        info = fields[part]
        ann = info.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return info


def _valid_range(loc: tuple, name: str) -> str | None:
    """e.g. '0 < train.lr <= 1', from the field's bounds."""
    info = _field(loc)
    if info is None:
        return None
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, at.Gt):
            lo = f"{m.gt:g} < "
        elif isinstance(m, at.Ge):
            lo = f"{m.ge:g} <= "
        elif isinstance(m, at.Lt):
            hi = f" < {m.lt:g}" if m.lt < 1e6 else f" < {m.lt:,}"
        elif isinstance(m, at.Le):
            hi = f" <= {m.le:g}" if m.le < 1e6 else f" <= {m.le:,.0f}"
    if lo is None and hi is None:
        return None
    return f"{lo or ''}{name}{hi or ''}"


_NUMERIC = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "int_type",
            "float_type", "int_from_float", "float_parsing", "int_parsing")


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{where}' (check its spelling; see recipes/default.yaml for valid keys)"
    msg = first["msg"].removeprefix("Value error, ")
    if not where:  # a check across sections: the message names its keys
        return f"{source}: {msg}"
    got = first.get("input")
    if kind == "value_error" and isinstance(got, dict):  # a section's own check: the message names the key
        return f"{source}: {msg}"
    if kind in _NUMERIC:
        valid = _valid_range(first["loc"], where)
        if valid:
            msg += f"; valid: {valid}"
    shown = repr(got)
    return f"{source}: {where}: {msg} (got {shown[:80] + '...' if len(shown) > 80 else shown})"


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
    # Also a fresh copy: a YAML alias shares one object between two places.
    if isinstance(obj, dict):
        return {k: _lists_to_tuples(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def load_recipe(path: str | Path | None, overrides: dict | None = None) -> Recipe:
    """Read a YAML recipe (None: the embedded default) and apply dotted overrides."""
    from qdeploy.recipe_load import apply_override, read_recipe_file

    data: dict = {}
    source = "default recipe"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = read_recipe_file(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: a recipe must be a mapping of sections (name:, dataset:, model:, ...), "
                            f"got {type(data).__name__}")
        data = _lists_to_tuples(data)
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        _check_override(dotted)
        apply_override(data, dotted, value)
    if path is not None and "name" not in data:  # the build folder is named after the file
        if not _NAME.match(path.stem):
            raise UserError(f"{path}: the file name {path.stem!r} is not a valid build folder name "
                            "(letters, digits, . _ -, at most 64): rename the file or set name: in it")
        data["name"] = path.stem
    return recipe_from_dict(data, source)


_NAME = re.compile(NAME_PATTERN)


def _check_override(dotted: str) -> None:
    """`--set train.lr.x=1`: train.lr is a value, not a section (an unknown key is pydantic's to name)."""
    model, parts = Recipe, dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        info = model.model_fields.get(part)
        if info is None:
            return
        ann = info.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            key = ".".join(parts[: i + 1])
            kind = "a list" if "tuple" in str(ann) else "a value"
            raise UserError(f"--set {dotted}: {key} is {kind}, not a section with keys: set it whole, e.g. --set {key}=...")
        model = ann
