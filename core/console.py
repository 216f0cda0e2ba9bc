"""The one console every package prints to: stderr, rich markup, and wide tables when the
output is a log file or CI rather than a terminal (rich's default would be 80 columns)."""
from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 150)
