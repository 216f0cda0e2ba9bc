"""What the reference harness checks, handed to it by the orchestration.

The harness never imports the build stages: `qdeploy.stages.common.reference_inputs(ctx)`
gives it the recipe, where the artifacts are (core.layout), the data splits and the loader of
the INT8 models, and the harness runs each artifact against them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.layout import Layout
from quant.data.imageset import stack_pixels


@dataclass
class Inputs:
    recipe: Any  # qdeploy.recipe.Recipe (read here: name, seed, dataset.size, model, train, npu, gates)
    layout: Layout
    splits: Callable[[], Any]  # -> quant.data.Splits, loaded once by the orchestration
    load_int8: Callable[[str], tuple]  # "npu" | "gpu" -> (NNCF torch model, checkpoint meta)
    version: str  # qdeploy's version, for the report header
    values: dict = field(default_factory=dict)  # results shared between twins (golden logits)

    @property
    def build_dir(self) -> Path:
        return self.layout.build_dir

    def stage_dir(self, stage: str) -> Path:
        return self.layout.stage(stage)

    def test_pixels(self, limit: int | None = None) -> np.ndarray:
        """The test set as uint8 [N,1,H,W]: the same images, in the same order, for every twin."""
        return stack_pixels(self.splits().test, limit)
