"""The house: imports run one way, core -> quant -> compilers -> targets -> reference -> qdeploy.

Every import of every module is read from its source (at module level and inside
functions alike), so a deferred import cannot hide an upward edge or a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.targets import NAMES, TARGETS

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "quant", "compilers", "targets", "reference", "qdeploy")  # ground floor first


def project_imports():
    """(module path, imported project package, line) for every import in the six packages."""
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in LAYERS:
                        yield path.relative_to(ROOT), top, node.lineno


def test_no_import_runs_up_a_floor():
    upward = [f"{path}:{line} imports {dst}" for path, dst, line in project_imports()
              if LAYERS.index(dst) > LAYERS.index(path.parts[0])]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_relative_imports_are_not_used():
    """Relative imports would escape the check above."""
    rel = []
    for pkg in LAYERS:
        for path in (ROOT / pkg).rglob("*.py"):
            rel += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not rel


def test_no_code_package_is_named_like_the_artifact_folder():
    assert not (ROOT / "qdeploy" / "build").exists() and not (ROOT / "build" / "__init__.py").exists()


def test_every_target_has_a_twin_stages_and_a_parity_step():
    from qdeploy.stages import PLAN, STAGES
    from reference.twins import TWINS

    assert set(TWINS) == set(NAMES)
    for name in NAMES:
        assert PLAN[name] == list(TARGETS[name].stages) and PLAN[name][-1] == name
        steps = [s.__name__ for s in STAGES[name].STEPS]
        assert steps[-1] == "step_parity" and "gates" in STAGES[name].STEPS[-1].inputs


@pytest.mark.parametrize("literal", ['"model.qdq.onnx"', '"model.xml"', '"fpga_summary.json"', '"model.qonnx.onnx"',
                                     '"qat_nncf.pt"', '"stage.json"'])
def test_artifact_names_are_written_once(literal):
    hits = [str(p.relative_to(ROOT)) for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")
            if literal in p.read_text()]
    assert hits == ["core/layout.py"], hits
