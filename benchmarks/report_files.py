"""Where a benchmark's results go: `<prefix>.json` (every figure) and `<prefix>.md` (the table a reader
opens, its command on top), both written atomically so an interrupted run leaves the last ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adainfer.engine.files import write_text_atomic  # noqa: E402


def write_report(prefix: Path, report: dict, markdown: str) -> None:
    """Write `report` as `prefix`.json (indented, newline-terminated) and `markdown` as `prefix`.md."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(prefix.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_text_atomic(prefix.with_suffix(".md"), markdown)
