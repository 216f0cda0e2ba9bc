"""Issue 20's acceptance on the real datasets (make test-slow; NEU about 70 min, casting about
20 min on 2 cores): each recipe trained from scratch over 3 seeds, under the AVX2 cap (what an
AVX2-only CPU computes) and natively; the mean, the worst seed and the QAT cost hold."""
import json

import pytest

from qdeploy.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.datasets]

SEEDS = ["0", "1", "2"]
# recipe: (dataset folder under ../shared/datasets, metric, mean floor, worst-seed floor)
ACCEPTANCE = {
    "neu": ("neu_det/images", "accuracy", 0.990, 0.986),
    "casting": ("casting", "defect_f1", 0.990, None),
}


@pytest.mark.parametrize("isa", ["avx2", "native"])
@pytest.mark.parametrize("name", sorted(ACCEPTANCE))
def test_recipe_quality_holds_over_seeds(name, isa, datasets_dir, tmp_path):
    folder, metric, mean_floor, worst_floor = ACCEPTANCE[name]
    assert main(["sweep", "--recipe", f"recipes/{name}.yaml", "--build-dir", str(tmp_path), "--seeds", *SEEDS,
                 "--isa", isa, "--jobs", "2", "--set", f"dataset.path={datasets_dir / folder}"]) == 0
    result = json.loads((tmp_path / name / "sweep" / isa / "sweep.json").read_text())
    qat = result["spread"][f"qat test {metric}"]
    assert qat["n"] == len(SEEDS)
    assert qat["mean"] >= mean_floor, f"{name} ({isa}): W4A4 mean {metric} {qat['mean']:.4f} < {mean_floor}"
    if worst_floor is not None:
        assert qat["min"] >= worst_floor, f"{name} ({isa}): worst seed {qat['min']:.4f} < {worst_floor}"
    if name == "neu":
        cost = result["spread"]["qat cost accuracy (points)"]
        assert cost["mean"] <= 0.5, f"{name} ({isa}): mean QAT cost {cost['mean']:.2f} points > 0.5"
