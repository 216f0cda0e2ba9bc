"""Bad input through the CLI: one actionable line, no traceback, nothing half-written.

Every case runs `qdeploy.cli.main([...])` in-process with its own --build-dir and checks:
  - exit code 2 (a UserError), a single last stderr line "qdeploy: error: ..." holding a
    case-specific phrase, no "Traceback";
  - no atomic temp file or directory (hidden `.<name>.*`) anywhere under the build dir;
  - no stage.json of the failed stage and no artifact of the failed step.
Cases that need a trained model share one tiny training (session fixture `trained`) and
work on a copy of it. Convertible image formats (CMYK JPEG, 16-bit and palette PNG) are
not errors: they must decode to the right gray levels.
"""
from __future__ import annotations

import errno
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from qdeploy.cli import main

from corpus import RECIPE, TINY, assert_user_error, copy_of, debris, folder_dataset, noise_png, run, severstal  # noqa: F401


# ---------------------------------------------------------------------------- helpers


def with_bad_file(tmp: Path, write: Callable[[Path], None], name: str = "defect/broken.png") -> Path:
    root = folder_dataset(tmp / "data", {"ok": 12, "defect": 12})
    write(root / name)
    return root


def _png_bytes(rng, shape=(64, 64)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _animated(path: Path, fmt: str) -> None:
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _multipage_tiff(path: Path) -> None:
    frames = [Image.new("L", (32, 32), v) for v in (0, 255)]
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:])


# ---------------------------------------------------------------------------- the shared trained build


# the session fixture `trained` (one tiny train stage) is in conftest.py


# ---------------------------------------------------------------------------- the corpus


@dataclass
class Setup:
    argv: list[str]  # without --build-dir
    build: Path  # the --build-dir
    stage: str | None = None  # the stage that fails: it must not have a stage.json
    artifacts: tuple[str, ...] = ()  # artifacts of the failed step, relative to build/<recipe>
    patches: list[tuple[object, str, object]] = field(default_factory=list)  # monkeypatch.setattr calls


def _train_on(root: Path, tmp: Path, *extra: str, kind: str = "folder") -> Setup:
    return Setup(["train", *TINY, "--set", f"dataset.kind={kind}", "--set", f"dataset.path={root}", *extra],
                 tmp / "build", "train", ("train/float.pt", "train/metrics.json"))


def _checkpoint(tmp: Path, trained: Path, write: Callable[[Path], None]) -> Setup:
    build = copy_of(trained, tmp)
    write(build / RECIPE / "train" / "qat.pt")  # qat.json stays: export reads it, then the weights
    _rerecord(build / RECIPE / "train")
    return Setup(["export", *TINY], build, "export", ("export/model.qonnx.onnx", "export/check.json"))


def _rerecord(stage_dir: Path) -> None:
    """Record the stage's current files in its stage.json, as if the stage had written the bad
    checkpoint itself: otherwise the changed file makes the stage run again (tests/test_bad_artifacts.py)
    and export never reads it."""
    import json

    from qdeploy.steps import stage_outputs

    marker = stage_dir / "stage.json"
    data = json.loads(marker.read_text())
    data["outputs"] = stage_outputs(stage_dir)
    marker.write_text(json.dumps(data))


def _other_architecture(path: Path) -> None:
    from quant.models import create_model

    torch.save(create_model("resnet18", 2, (32, 32), width=0.25).state_dict(), path)


def _nan_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key].view(-1)[0] = float("nan")
    torch.save(state, path)


class NotWeights:
    """A pickled object: torch.load(weights_only=True) must refuse to run its reduction."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickled_object(path: Path) -> None:
    torch.save({"model": NotWeights()}, path)


def _read_only(tmp: Path) -> Setup:
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    setup = Setup(["train", *TINY], ro, "train", ("train/float.pt",))
    probe = ro / ".probe"
    try:
        probe.touch()  # root ignores permission bits: simulate what a normal user sees
    except PermissionError:
        return setup
    probe.unlink()
    real_access = os.access

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(ro.resolve()):
            return False
        return real_access(path, mode, *a, **kw)

    setup.patches.append((os, "access", access))
    return setup


def _disk_full(tmp: Path, trained: Path) -> Setup:
    build = copy_of(trained, tmp)
    real_replace = os.replace

    def replace(src, dst, *a, **kw):  # the rename that publishes an atomic write fails: disk full
        if Path(src).name.startswith(".") and Path(dst).resolve().is_relative_to(build.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **kw)

    return Setup(["export", *TINY], build, "export", ("export/model.qonnx.onnx", "export/check.json"),
                 [(os, "replace", replace)])


def _empty_dir(path: Path) -> Path:
    path.mkdir()
    return path


def _recipe_file(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _byom_wrong_size(tmp: Path, trained: Path) -> Setup:
    if importlib.util.find_spec("qdeploy.byom") is None:
        pytest.skip("qdeploy/byom.py does not exist yet: `build --model x.onnx --samples DIR` is not implemented")
    build = copy_of(trained, tmp)
    assert main(["export", "--build-dir", str(build), *TINY]) == 0
    samples = tmp / "samples"
    rng = np.random.default_rng(5)
    for i in range(4):
        noise_png(samples / f"s{i}.png", rng)
    noise_png(samples / "odd_size.png", rng, shape=(17, 23))
    return Setup(["build", "--target", "fpga", "--model", str(build / RECIPE / "export" / "model.qonnx.onnx"),
                  "--samples", str(samples), *TINY], tmp / "byom", None)


def _no_npu_here() -> bool:
    import openvino as ov

    return not any(d.startswith("NPU") for d in ov.Core().available_devices)


def _no_tensorrt_here() -> bool:
    from compilers.tensorrt.engine import tensorrt_available

    return not tensorrt_available()[0]


_rng = np.random.default_rng(11)
PNG = _png_bytes(_rng)  # a valid 64x64 PNG, cut in half by the truncated-png case

# id -> (setup(tmp, trained_getter) -> Setup, phrases in the error line)
CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    # image files
    "zero-byte-image": (lambda t, g: _train_on(with_bad_file(t, lambda p: p.write_bytes(b"")), t),
                        ("broken.png", "is empty (0 bytes)")),
    "truncated-png": (lambda t, g: _train_on(with_bad_file(t, lambda p: p.write_bytes(PNG[: len(PNG) // 2])), t),
                      ("broken.png", "truncated")),
    "animated-gif": (lambda t, g: _train_on(with_bad_file(t, lambda p: _animated(p, "GIF")), t),
                     ("broken.png", "3 frames")),  # GIF data under an image extension
    "animated-png": (lambda t, g: _train_on(with_bad_file(t, lambda p: _animated(p, "PNG")), t),
                     ("broken.png", "3 frames")),
    "multi-page-tiff": (lambda t, g: _train_on(with_bad_file(t, _multipage_tiff, "defect/pages.tif"), t),
                        ("pages.tif", "2 frames")),
    "not-an-image": (lambda t, g: _train_on(with_bad_file(t, lambda p: p.write_text("hello")), t),
                     ("broken.png", "not an image")),
    # dataset layouts
    "empty-dataset-folder": (lambda t, g: _train_on(_empty_dir(t / "empty"), t),
                             ("no images in",)),
    "empty-class-folder": (lambda t, g: _train_on(folder_dataset(t / "data", {"ok": 12, "defect": 0}), t),
                           ("class folder", "defect", "has no images")),
    "only-one-class": (lambda t, g: _train_on(folder_dataset(t / "data", {"ok": 12}), t),
                       ("only one class folder", "at least two")),
    "images-without-class-folders": (lambda t, g: _train_on(folder_dataset(t, {"data": 6}) / "data", t),
                                     ("one folder per class",)),
    "missing-dataset-path": (lambda t, g: _train_on(t / "no such dir", t), ("no such dir", "is not a directory")),
    "severstal-missing-image": (lambda t, g: _train_on(severstal(t / "sev", [("img00.jpg", 1, "1 10"), ("gone.jpg", 2, "5 5")]),
                                                       t, kind="severstal"),
                                ("gone.jpg", "is not in", "restore the image or delete its rows")),
    "severstal-malformed-rle": (lambda t, g: _train_on(severstal(t / "sev", [("img00.jpg", 1, "1 10 30")]), t, kind="severstal"),
                                ("line 2", "img00.jpg", "malformed RLE")),
    # checkpoints (export of a trained build whose qat.pt was replaced)
    "checkpoint-other-architecture": (lambda t, g: _checkpoint(t, g(), _other_architecture),
                                      ("qat.pt", "does not fit this architecture")),
    "checkpoint-nan-weights": (lambda t, g: _checkpoint(t, g(), _nan_weights), ("qat.pt", "NaN/inf weights", "retrain")),
    "checkpoint-pickled-object": (lambda t, g: _checkpoint(t, g(), _pickled_object),
                                  ("qat.pt", "pickles Python objects", "state_dict of tensors")),
    "checkpoint-truncated": (lambda t, g: _checkpoint(t, g(), lambda p: p.write_bytes(p.read_bytes()[:4000])),
                             ("qat.pt", "not a readable torch checkpoint")),
    # recipes
    "recipe-unknown-key": (lambda t, g: Setup(["train", *TINY, "--set", "model.widht=0.5"], t / "b"),
                           ("unknown key 'model.widht'",)),
    "recipe-file-unknown-key": (lambda t, g: Setup(["train", "--recipe", str(_recipe_file(t, "train:\n  epochs: 3\n"))], t / "b"),
                                ("recipe.yaml", "unknown key 'train.epochs'")),
    "recipe-wrong-type": (lambda t, g: Setup(["train", *TINY, "--set", "train.float_epochs=many"], t / "b"),
                          ("train.float_epochs", "integer", "'many'")),
    "recipe-negative-bit-width": (lambda t, g: Setup(["train", *TINY, "--set", "model.weight_bits=-4"], t / "b"),
                                  ("model.weight_bits", "greater than or equal to 2", "-4")),
    "recipe-unknown-model": (lambda t, g: Setup(["train", *TINY, "--set", "model.name=resnet9"], t / "b"),
                             ("unknown model 'resnet9'", "resnet8")),
    "recipe-unknown-part": (lambda t, g: Setup(["build", "--target", "fpga", *TINY, "--set", "fpga.part=zcu999"], t / "b"),
                            ("unknown FPGA part 'zcu999'", "zcu104")),
    "recipe-broken-yaml": (lambda t, g: Setup(["train", "--recipe", str(_recipe_file(t, "model: [resnet8\n"))], t / "b"),
                           ("recipe.yaml", "not valid YAML")),
    "recipe-not-found": (lambda t, g: Setup(["train", "--recipe", str(t / "nope.yaml")], t / "b"), ("nope.yaml", "not found")),
    "unknown-target": (lambda t, g: Setup(["build", "--target", "tpu", *TINY], t / "b"), ("unknown target 'tpu'", "fpga, npu, gpu")),
    # targets: what the part, the compiler or the machine cannot do
    "fps-beyond-the-part": (lambda t, g: Setup(["build", "--target", "fpga", *TINY, "--set", "fpga.target_fps=1000000"],
                                               copy_of(g(), t), "fpga", ("fpga/fpga_summary.json",)),
                            ("fpga.target_fps 1,000,000", "at most", "fpga.replicas")),  # refused before the FINN flow
    "fps-beyond-16-instances": (lambda t, g: Setup(["build", "--target", "fpga", *TINY, "--set", "fpga.target_fps=1e8",
                                                    "--set", "fpga.replicas=auto"],
                                                   copy_of(g(), t), "fpga", ("fpga/fpga_summary.json",)),
                                ("fpga.target_fps 100,000,000", "16 data-parallel instances")),
    "layer-finn-cannot-lower": (lambda t, g: Setup(["build", "--target", "fpga", *TINY, "--set", "model.name=effnet_b0"], t / "b"),
                                ("effnet_b0", "SiLU", "squeeze-excite", "resnet8")),
    "npu-requested-without-npu": (lambda t, g: Setup(["build", "--target", "npu", *TINY, "--set", "npu.device=npu"], t / "b"),
                                  ("no NPU device", "npu.device: cpu")),
    "engine-required-without-tensorrt": (lambda t, g: Setup(["build", "--target", "gpu", *TINY, "--set", "gpu.require_engine=true"],
                                                            t / "b"),
                                         ("gpu.require_engine", "tensorrt")),
    "byom-sample-of-wrong-size": (lambda t, g: _byom_wrong_size(t, g()), ("odd_size.png",)),
    # the machine
    "read-only-output-dir": (lambda t, g: _read_only(t), ("readonly", "--build-dir")),
    "disk-full": (lambda t, g: _disk_full(t, g()), ("no space left", "model.qonnx.onnx")),
}

# cases that must fail before any stage runs (cheap checks first): no stage directory at all
BEFORE_ANY_STAGE = {"layer-finn-cannot-lower", "npu-requested-without-npu",
                    "engine-required-without-tensorrt", "recipe-unknown-part", "recipe-unknown-model"}


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_actionable_line(case, tmp_path, capsys, monkeypatch, request):
    if case == "npu-requested-without-npu" and not _no_npu_here():
        pytest.skip("this machine has an NPU")
    if case == "engine-required-without-tensorrt" and not _no_tensorrt_here():
        pytest.skip("this machine has TensorRT and a CUDA GPU")
    make, phrases = CASES[case]
    setup = make(tmp_path, lambda: request.getfixturevalue("trained"))
    for obj, name, value in setup.patches:
        monkeypatch.setattr(obj, name, value)
    code, err = run(capsys, *setup.argv, "--build-dir", str(setup.build))
    monkeypatch.undo()
    print(assert_user_error(code, err, phrases))  # shown by pytest -rP

    if setup.build.exists():
        assert not debris(setup.build), f"temp files left behind: {debris(setup.build)}"
        stages = setup.build / RECIPE
        if setup.stage:
            assert not (stages / setup.stage / "stage.json").exists()
        for artifact in setup.artifacts:
            assert not (stages / artifact).exists(), f"{artifact} written by the failed step"
        if case in BEFORE_ANY_STAGE:
            assert not stages.exists() or not any(stages.iterdir()), f"a stage ran: {list(stages.iterdir())}"
    if case == "read-only-output-dir":
        setup.build.chmod(0o755)


# ---------------------------------------------------------------------------- formats that convert


def test_convertible_formats_decode_to_the_right_gray_levels(tmp_path):
    """CMYK JPEG, 16-bit PNG and palette PNG are ordinary files a user has: decoded, not refused."""
    from quant.data.images import read_gray

    Image.new("CMYK", (32, 32), (0, 0, 0, 128)).save(tmp_path / "cmyk_gray.jpg", quality=100)
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(tmp_path / "cmyk_cyan.jpg", quality=100)
    cyan_luma = Image.new("RGB", (1, 1), (0, 255, 255)).convert("L").getpixel((0, 0))  # ITU-R 601
    assert Image.open(tmp_path / "cmyk_gray.jpg").mode == "CMYK"
    assert np.abs(read_gray(tmp_path / "cmyk_gray.jpg").astype(int) - 127).max() <= 1
    assert np.abs(read_gray(tmp_path / "cmyk_cyan.jpg").astype(int) - cyan_luma).max() <= 1

    g16 = np.tile(np.array([0, 257, 1000, 32768, 65535], np.uint16), (8, 1))
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(read_gray(tmp_path / "g16.png")[0], [0, 1, 4, 128, 255])

    index = np.zeros((8, 24), np.uint8)
    index[:, 8:16], index[:, 16:] = 1, 2
    pal = Image.fromarray(index, "P")
    pal.putpalette([0, 0, 0, 200, 200, 200, 255, 0, 0] + [0] * (768 - 9))
    pal.save(tmp_path / "palette.png")
    red_luma = Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(read_gray(tmp_path / "palette.png")[0, [0, 8, 16]], [0, 200, red_luma])


def test_a_dataset_of_convertible_formats_loads(tmp_path):
    from qdeploy.recipe import DatasetConfig
    from quant.data.splits import load_splits

    root = folder_dataset(tmp_path / "data", {"ok": 10, "defect": 10})
    rng = np.random.default_rng(4)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), "CMYK").save(root / "ok" / f"c{i}.jpg")
        Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(root / "defect" / f"d{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).convert("P").save(root / "defect" / f"p{i}.png")
    s = load_splits(DatasetConfig(kind="folder", path=str(root), size=(32, 32)), 0, tmp_path / "cache")
    assert len(s.train) + len(s.val) + len(s.test) == 29
    for part in (s.train, s.val, s.test):
        assert part.array().dtype == np.uint8


# ---------------------------------------------------------------------------- paths users have


def test_dataset_path_with_spaces_and_non_ascii_letters_works(tmp_path):
    from qdeploy.cli import _parse_set
    from qdeploy.recipe import load_recipe
    from quant.data.splits import load_splits

    root = tmp_path / "my data" / "Prüfteile Größe ü é 日本"
    rng = np.random.default_rng(8)
    for cls in ("ok", "Kratzer ä"):
        for i in range(12):
            noise_png(root / cls / f"Bild {i} ö.png", rng)
    recipe = load_recipe(None, _parse_set(["dataset.kind=folder", f"dataset.path={root}", "dataset.size=[32, 32]"]))
    assert recipe.dataset.path == str(root)
    s = load_splits(recipe.dataset, recipe.seed, tmp_path / "cache")
    assert s.class_names == ("ok", "defect") and len(s.train) + len(s.val) + len(s.test) == 24
    assert any("Kratzer ä/Bild" in k for k in s.train.keys)
    assert s.test.pixels(0).shape == (32, 32)


# ---------------------------------------------------------------------------- interruption


def test_interrupt_leaves_no_debris_and_the_next_run_resumes(trained, tmp_path, capsys, monkeypatch):
    """Ctrl-C inside a step, mid-way through an atomic write: exit 130, nothing half-written,
    and the rerun skips the finished stages and redoes the interrupted one."""
    import quant.export
    from core.atomic import atomic_path, write_json

    build = copy_of(trained, tmp_path)
    export_dir = build / RECIPE / "export"

    def interrupted_export(model, in_size, path):
        write_json(Path(path).with_name("partial.json"), {"written": "before the interrupt"})
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a model")
            raise KeyboardInterrupt

    monkeypatch.setattr(quant.export, "export_qonnx", interrupted_export)
    code, err = run(capsys, "export", "--build-dir", str(build), *TINY)
    monkeypatch.undo()
    assert code == 130 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("qdeploy: interrupted")
    assert not debris(build), debris(build)
    assert not (export_dir / "model.qonnx.onnx").exists() and not (export_dir / "stage.json").exists()
    assert (build / RECIPE / "train" / "stage.json").is_file()

    code, err = run(capsys, "export", "--build-dir", str(build), *TINY)
    assert code == 0, err
    assert "train: up to date" in err and "step_train_float" not in err
    assert "export [1/1] step_export_qonnx" in err
    assert (export_dir / "model.qonnx.onnx").is_file() and (export_dir / "stage.json").is_file()
    assert not debris(build)
