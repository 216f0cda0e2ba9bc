"""The README's results region is what tools/readme_results.py renders from its snapshot,
and the snapshot is what a run's report.json / bench.json say (tests/test_pipeline.py runs
the script on a fresh build)."""
from __future__ import annotations

import json
from pathlib import Path

from core import layout
from reference.results_tables import region, render

ROOT = Path(__file__).resolve().parents[1]


def test_readme_region_and_generated_page_are_the_rendered_snapshot():
    snap = json.loads((ROOT / "docs" / layout.RESULTS_SNAPSHOT).read_text())
    text = render(snap)
    assert region((ROOT / "README.md").read_text()) == text
    assert (ROOT / "docs" / layout.RESULTS_GENERATED).read_text().endswith(text)
    # every number sits beside the machine that measured it
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")
            and not line.startswith("| runtime")]
    assert rows and all(("cores [" in line and "int8:" in line) or "FINN estimate" in line for line in rows)
