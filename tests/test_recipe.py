import pytest

from core.errors import UserError
from qdeploy.recipe import load_recipe, recipe_from_dict


def test_default_recipe_is_the_embedded_job():
    r = load_recipe(None)
    assert r.dataset.kind == "synthetic" and r.dataset.size == (64, 64)
    assert (r.model.name, r.model.weight_bits, r.model.act_bits) == ("resnet8", 4, 4)
    assert r.fpga.part == "zcu104" and r.fpga.target_fps == 40000


@pytest.mark.parametrize("data, needle", [
    ({"model": {"wieght_bits": 4}}, "unknown key 'model.wieght_bits'"),
    ({"modle": {}}, "unknown key 'modle'"),
    ({"model": {"weight_bits": -1}}, "model.weight_bits"),
    ({"model": {"weight_bits": "4"}}, "model.weight_bits"),
    ({"fpga": {"target_fps": "fast"}}, "fpga.target_fps"),
    ({"dataset": {"kind": "folder"}}, "dataset.path is required"),
    ({"dataset": {"split": [0.5, 0.5, 0.5]}}, "dataset.split"),
    ({"train": {"target_recall": 0.9, "target_fpr": 0.1}}, "not both"),
])
def test_bad_recipes_name_the_key(data, needle):
    with pytest.raises(UserError) as e:
        recipe_from_dict(data, "r.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "steel.yaml"
    p.write_text("model:\n  name: effnet_lite\n  weight_bits: 3\ndataset:\n  size: [32, 48]\n")
    r = load_recipe(p, {"fpga.target_fps": 5000.0})
    assert r.name == "steel" and r.model.name == "effnet_lite" and r.model.weight_bits == 3
    assert r.dataset.size == (32, 48) and r.fpga.target_fps == 5000.0


def test_digest_tracks_only_named_sections():
    a = load_recipe(None)
    b = load_recipe(None, {"fpga.target_fps": 1000.0})
    assert a.digest("model", "train") == b.digest("model", "train")
    assert a.digest("fpga") != b.digest("fpga")


def test_broken_yaml_is_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(p)


def test_every_shipped_recipe_validates():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"default", "neu", "casting"}
    for p in recipes:
        assert load_recipe(p).name == p.stem


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "", ".", "..", "a/b", "x" * 65, "a\nb"])
def test_the_recipe_name_is_one_safe_folder_name(name):
    """build/<name> is joined under --build-dir: a path there would write outside it."""
    with pytest.raises(UserError, match=r"name"):
        load_recipe(None, {"name": name})


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_outside_numpy_range_are_refused(seed):
    with pytest.raises(UserError, match=r"seed"):
        load_recipe(None, {"seed": seed})
