"""`make readme-results`: the README's results tables from a build's report.json and bench.json.

    python tools/readme_results.py [--build build/default] [--docs docs] [--readme README.md]
    python tools/readme_results.py --from-snapshot docs/results_snapshot.json   (re-render only)

Writes docs/results_snapshot.json (the numbers, with the machine that measured them),
docs/RESULTS_GENERATED.md and the README region between <!-- results:begin --> and
<!-- results:end -->. Nothing in that region is typed by hand (tests/test_readme_results.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import layout  # noqa: E402
from core.atomic import write_json, write_text  # noqa: E402
from reference.results_tables import extract, render, update_region  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=str(ROOT / "build" / "default"), help="build/<recipe> holding report/ and bench/")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="README to update ('' to skip)")
    p.add_argument("--from-snapshot", help="render this snapshot instead of reading the build")
    args = p.parse_args(argv)
    docs = Path(args.docs)
    if args.from_snapshot:
        snap = json.loads(Path(args.from_snapshot).read_text())
    else:
        lay = layout.Layout(Path(args.build))
        report_path, bench_path = lay.report_dir / layout.REPORT, lay.bench_dir / layout.BENCH
        if not report_path.is_file():
            print(f"readme-results: error: {report_path} not found: run 'make parity' (and 'make bench') first",
                  file=sys.stderr)
            return 2
        bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
        snap = extract(json.loads(report_path.read_text()), bench)
        write_json(docs / layout.RESULTS_SNAPSHOT, snap)
    text = render(snap)
    write_text(docs / layout.RESULTS_GENERATED, f"# Results of the default job (generated)\n\n{text}")
    if args.readme:
        readme = Path(args.readme)
        write_text(readme, update_region(readme.read_text(), text))
    print(f"readme-results: {docs / layout.RESULTS_GENERATED}" + (f" and {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
