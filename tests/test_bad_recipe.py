"""Bad recipes and --set values through the real CLI: one `qdeploy: error:` line naming the
input, exit 2, nothing written; plus a seeded fuzz of the recipe loader.

Every case runs `qdeploy check` (validates and writes nothing) or `qdeploy train` (which must
fail in validation, before any stage: no build folder appears). Fast: no case trains.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from corpus import assert_user_error, files_outside, run
from qdeploy.cli import main
from qdeploy.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = (REPO / "recipes" / "default.yaml").read_text(encoding="utf-8")

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
SET_BOMB = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcde", "bcdef")) + "]"


def _text(body: str | bytes, name: str = "recipe.yaml"):
    def make(tmp: Path) -> list[str]:
        p = tmp / name
        (p.write_bytes if isinstance(body, bytes) else lambda b: p.write_text(b, encoding="utf-8"))(body)
        return ["--recipe", str(p)]
    return make


def _sets(*items: str):
    def make(tmp: Path) -> list[str]:
        return [a for item in items for a in ("--set", item)]
    return make


def _dir_as_recipe(tmp: Path) -> list[str]:
    (tmp / "recipes.d").mkdir()
    return ["--recipe", str(tmp / "recipes.d")]


# id -> (argv maker, phrases of the error line)
CASES = {
    # YAML reading
    "alias-bomb": (_text(BOMB), ("recipe.yaml", "alias bomb", "refused before")),
    "recursive-alias": (_text("train: &t {lr: *t}\n"), ("recipe.yaml", "recursive")),
    "too-many-aliases": (_text("x: &x 1\nl: [" + ", ".join(["*x"] * 150) + "]\n"), ("more than 100 aliases",)),
    "deep-nesting": (_text("a: " + "[" * 200 + "]" * 200 + "\n"), ("nested deeper than",)),
    "too-large": (_text("# " + "x" * (1 << 20) + "\n"), ("larger than 1 MiB",)),
    "duplicate-top-key": (_text("model:\n  width: 0.5\nmodel:\n  width: 2.0\n"), ("'model' appears twice", "lines 1 and 3")),
    "duplicate-nested-key": (_text("train:\n  lr: 0.01\n  batch_size: 8\n  lr: 0.02\n"), ("'lr' appears twice", "lines 2 and 4")),
    "python-tag": (_text("train:\n  lr: !!python/object/apply:os.system ['echo pwned']\n"), ("tags are not allowed", "line 2")),
    "custom-tag": (_text("model: !include other.yaml\n"), ("tags are not allowed", "!include")),
    "two-documents": (_text("name: a\n---\nname: b\n"), ("single document",)),
    "unclosed-flow": (_text("dataset:\n  size: [32, 32\n"), ("recipe.yaml", "not valid YAML", "line")),
    "tab-indent": (_text("model:\n\tname: resnet8\n"), ("not valid YAML", "\\t")),
    "utf16-bom": (_text("model:\n  name: resnet8\n".encode("utf-16")), ("recipe.yaml", "UTF-16", "save it as UTF-8")),
    "utf16-no-bom": (_text("model:\n  name: resnet8\n".encode("utf-16-le")), ("recipe.yaml", "NUL bytes")),
    "latin1": (_text("name: prüfung\n".encode("latin-1")), ("recipe.yaml", "not UTF-8", "0xfc", "line 1")),
    "huge-integer-literal": (_text("seed: " + "9" * 5000 + "\n"), ("number of 5000 digits",)),
    "not-a-mapping": (_text("- model\n- train\n"), ("must be a mapping", "list")),
    "scalar-document": (_text("just words\n"), ("must be a mapping", "str")),
    "list-as-key": (_text("? [model, train]\n: 1\n"), ("a key must be a plain name",)),
    "recipe-is-a-directory": (_dir_as_recipe, ("recipes.d", "is a directory")),
    "recipe-is-a-device": (lambda t: ["--recipe", "/dev/null"], ("/dev/null", "not a regular file")),
    "bad-file-name": (_text("model:\n  width: 0.5\n", name="my recipe!.yaml"), ("'my recipe!'", "rename the file or set name")),
    # numbers: bounded, finite, the valid range in the message
    "lr-inf": (_sets("train.lr=.inf"), ("train.lr", "finite", "0 < train.lr <= 1")),
    "lr-huge": (_sets("train.lr=1e6"), ("train.lr", "0 < train.lr <= 1", "1000000.0")),
    "lr-nan": (_sets("train.lr=.nan"), ("train.lr", "finite")),
    "qat-lr-negative": (_sets("train.qat_lr=-0.1"), ("train.qat_lr", "0 < train.qat_lr <= 1")),
    "threads-100000": (_sets("train.threads=100000"), ("train.threads", "1 <= train.threads <= 256")),
    "fps-inf": (_sets("fpga.target_fps=.inf"), ("fpga.target_fps", "finite")),
    "clock-zero": (_sets("fpga.clock_mhz=0"), ("fpga.clock_mhz", "0 < fpga.clock_mhz <= 1000")),
    "replicas-zero": (_sets("fpga.replicas=0"), ("fpga.replicas",)),
    "thresholds-unknown": (_sets("fpga.thresholds=inside"), ("fpga.thresholds", "standalone")),
    "epochs-huge": (_sets("train.float_epochs=100000"), ("train.float_epochs", "0 <= train.float_epochs <= 1000")),
    "epochs-float": (_sets("train.qat_epochs=2.5"), ("train.qat_epochs", "integer", "1 <= train.qat_epochs")),
    "steps-patience-zero": (_sets("train.patience=0"), ("train.patience", "1 <= train.patience <= 1000")),
    "size-huge": (_sets("dataset.size=[100000, 100000]"), ("dataset.size", "[8, 4096]")),
    "size-149-gib": (_sets("dataset.size=[4096, 4096]"), ("dataset.size", "pixels per image", "1,048,576")),
    "batch-times-size": (_sets("train.batch_size=1024", "dataset.size=[512, 512]"), ("train.batch_size x dataset.size", "per batch")),
    "synthetic-too-big": (_sets("dataset.num_images=1000000", "dataset.size=[256, 256]"), ("dataset.num_images x dataset.size", "to generate")),
    "split-nan": (_sets("dataset.split=[0.7, .nan, 0.15]"), ("dataset.split", "finite")),
    "split-not-summing": (_sets("dataset.split=[0.7, 0.7, 0.15]"), ("dataset.split", "summing to 1")),
    "seed-negative": (_sets("seed=-1"), ("seed", "0 <= seed < 4,294,967,296")),
    "seed-too-big": (_sets("seed=4294967296"), ("seed", "0 <= seed")),
    "seed-is-not-split": (_sets("seed=99999999999"), ("seed",)),
    "bits-out-of-range": (_sets("model.act_bits=16"), ("model.act_bits", "2 <= model.act_bits <= 8")),
    "width-bool": (_sets("model.width=true"), ("model.width",)),
    "yes-is-not-bool": (_sets("train.augment=yes"), ("train.augment", "'yes'")),
    # --set syntax
    "set-without-equals": (_sets("train.lr"), ("expected key=value",)),
    "set-empty-segment": (_sets("train..lr=1"), ("is not a recipe key",)),
    "set-through-scalar": (_sets("train.lr.peak=0.1"), ("train.lr is a value", "set it whole")),
    "set-through-list": (_sets("dataset.size.height=32"), ("dataset.size is a list",)),
    "set-through-seed": (_sets("seed.value=3"), ("seed is a value",)),
    "set-tab-value": (_sets("train.lr=\t0.1\tx"), ("train.lr",)),
    "set-control-char": (_sets("model.name=res\x1bnet"), ("--set model.name", "control characters")),
    "set-non-utf8": (_sets("model.name=res" + b"\xff".decode("utf-8", "surrogateescape")), ("not valid utf-8",)),
    "set-python-tag": (_sets("train.lr=!!python/name:os.system"), ("--set train.lr", "tags are not allowed")),
    "set-alias-bomb": (_sets("model.name=" + SET_BOMB), ("--set model.name", "alias bomb")),
    "set-unknown-section": (_sets("fpag.part=zcu104"), ("unknown key 'fpag'",)),
    # paths
    "name-traversal": (_sets("name=../../x"), ("name",)),
    "name-absolute": (_sets("name=/tmp/x"), ("name",)),
    "dataset-path-nul": (_sets("dataset.kind=folder", 'dataset.path="/tmp/a\\0b"'), ("dataset.path", "control characters")),
    "ok-class-with-slash": (_sets("dataset.ok_classes=[../ok]"), ("dataset.ok_classes", "class-folder name")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["check", "train"])
def test_bad_recipe_is_one_line_and_writes_nothing(case, command, tmp_path, capsys, monkeypatch):
    make, phrases = CASES[case]
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path)
    before = files_outside(tmp_path, tmp_path / "build")
    code, err = run(capsys, command, *argv, "--build-dir", str(tmp_path / "build"))
    print(assert_user_error(code, err, phrases))
    assert not (tmp_path / "build").exists(), "validation failed, yet something was written"
    assert files_outside(tmp_path, tmp_path / "build") == before


# ---------------------------------------------------------------------------- what must read correctly


def test_yaml_1_2_numbers_and_strings(tmp_path):
    """1e6 is a float (YAML 1.1 made it a string), 010 is ten, yes and dates stay strings."""
    from qdeploy.recipe_load import parse_yaml

    assert parse_yaml("a: 1e6\nb: 010\nc: yes\nd: 2024-01-01\ne: 0x10\nf: -.inf\ng: ~\n", "t") == \
        {"a": 1e6, "b": 10, "c": "yes", "d": "2024-01-01", "e": 16, "f": float("-inf"), "g": None}
    p = tmp_path / "fps.yaml"
    p.write_text("fpga:\n  target_fps: 1e4\ntrain:\n  lr: 1e-3\n", encoding="utf-8")
    r = load_recipe(p)
    assert r.fpga.target_fps == 10000.0 and r.train.lr == 0.001


def test_utf8_bom_and_anchors_are_fine(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes("\ufeffmodel:\n  name: resnet8\n  width: &w 0.5\ngates:\n  min_auroc: 0.6\n".encode("utf-8"))
    r = load_recipe(p)
    assert r.name == "bom" and r.model.width == 0.5 and r.gates.min_auroc == 0.6


def test_a_valid_recipe_checks_with_exit_0_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "check", "--recipe", str(REPO / "recipes" / "default.yaml"), "--build-dir", "b")
    assert code == 0, err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------- fuzz


_VALUES = [0, 1, -1, 2**32, 2**64, 10**30, 0.5, 1e6, -1e-9, ".inf", "-.inf", ".nan", "1e999", "true", "null", "~",
           "''", '"x"', "[]", "{}", "[1, 2]", "[32, 32]", "[0.7, 0.15, 0.15]", "[.nan, 0.5, 0.5]", "{a: 1}",
           "!!python/name:os.system", "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "&x 1", "*x",
           "../../etc", "/abs/path", "a\tb", "'\\x00'", "\"\\u0000\"", "\u00e9\u65e5", "0o777", "0x1f", "1_000",
           "12:30", "- a", "? a", "|\n  block", "'unterminated", "[[[[", "]]", "yes", "on", "2024-01-01"]


def _mutate(rng: random.Random, text: str) -> str | bytes:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(len(lines))
        op = rng.randrange(8)
        if op == 0 and ":" in lines[k]:  # a value replaced
            key = lines[k].split(":", 1)[0]
            lines[k] = f"{key}: {rng.choice(_VALUES)}"
        elif op == 1:  # a line duplicated (duplicate key)
            lines.insert(k, lines[k])
        elif op == 2:  # a line deleted
            del lines[k]
        elif op == 3:  # indentation broken
            lines[k] = rng.choice(["\t", " ", "   ", ""]) + lines[k].lstrip()
        elif op == 4:  # an alias chain
            n = rng.randint(2, 12)
            lines.append("z0: &z0 [" + ", ".join(["1"] * n) + "]")
            lines += [f"z{i}: &z{i} [" + ", ".join([f"*z{i - 1}"] * n) + "]" for i in range(1, rng.randint(2, 8))]
        elif op == 5:  # characters flipped
            chars = list(lines[k]) or [" "]
            chars[rng.randrange(len(chars))] = rng.choice("[]{}:,&*!|>'\"#%@`\t\x00\x85\u2028-?")
            lines[k] = "".join(chars)
        elif op == 6:  # cut short
            lines = lines[: k + 1]
            lines[-1] = lines[-1][: rng.randrange(len(lines[-1]) + 1)]
        else:  # a new key somewhere
            lines.insert(k, rng.choice(["  ", ""]) + rng.choice(["seed", "name", "lr", "size", "<<", "x"]) + ": "
                         + str(rng.choice(_VALUES)))
        if not lines:
            lines = [""]
    out = "\n".join(lines) + "\n"
    if rng.random() < 0.1:
        return out.encode(rng.choice(["utf-16", "latin-1", "utf-32"]), errors="replace")
    if rng.random() < 0.05:
        raw = bytearray(out.encode("utf-8"))
        raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    return out


def test_fuzz_the_recipe_loader(tmp_path, capsys, monkeypatch):
    """Seeded mutations of the default recipe (and of --set values): every run exits 0, or 2 with
    exactly one `qdeploy: error:` line; no traceback; nothing written anywhere (check writes nothing)."""
    rng = random.Random(20261202)
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build"
    counts = {0: 0, 2: 0}
    for i in range(300):
        body = _mutate(rng, DEFAULT_YAML)
        recipe = tmp_path / "fuzz.yaml"
        recipe.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
        argv = ["check", "--recipe", str(recipe), "--build-dir", str(build)]
        if rng.random() < 0.3:
            argv += ["--set", f"{rng.choice(['train.lr', 'seed', 'dataset.size', 'model.name', 'fpga', 'x.y.z'])}="
                              f"{rng.choice(_VALUES)}"]
        before = files_outside(tmp_path, build)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err, (i, body, err)
        assert code in (0, 2), (i, body, code, err)
        errors = [ln for ln in err.splitlines() if ln.startswith("qdeploy: error:")]
        assert len(errors) == (1 if code == 2 else 0), (i, body, err)
        assert not build.exists() and files_outside(tmp_path, build) == before, (i, body)
        counts[code] += 1
    assert counts[0] >= 10 and counts[2] >= 100, counts  # the fuzz reaches both outcomes


def test_the_recipe_corpus_is_large_enough():
    assert len(CASES) >= 50
    yaml.safe_load(DEFAULT_YAML)  # the fuzz seed is valid YAML


@pytest.mark.parametrize("argv", [["train", "--set"], ["build"], ["train", "--frobnicate"], ["deploy"]],
                         ids=["set-without-value", "build-without-target", "unknown-option", "unknown-command"])
def test_usage_errors_end_with_one_error_line(argv, tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "qdeploy", *argv], cwd=tmp_path, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert_user_error(p.returncode, p.stderr)
    assert not any(tmp_path.iterdir())


def test_distillation_for_a_two_output_model_is_refused_before_anything_is_written(tmp_path, capsys):
    code, err = run(capsys, "train", "--build-dir", str(tmp_path / "build"), "--set", "model.name=segdec",
                    "--set", "train.qat_distill=0.5", "--set", "dataset.size=[32, 96]")
    assert_user_error(code, err, ("train.qat_distill", "segdec"))
    assert not (tmp_path / "build").exists()
