"""``bench/results/scale.json``, the file the scale benchmarks share (decode, evaluate, train,
align, serve rows): one row per task, dataset, size and process count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"


def _key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    return row["task"], row["dataset"], row["entities_per_kg"], row.get("processes", 1)


def save_rows(rows: list[dict[str, Any]], path: Path = RESULTS) -> None:
    """Merge ``rows`` into the file, replacing the rows of the same key."""
    results = (json.loads(path.read_text(encoding="utf-8")) if path.is_file()
               else {"rows": []})
    new = {_key(row) for row in rows}
    results["rows"] = [r for r in results["rows"] if _key(r) not in new] + rows
    results["rows"].sort(key=_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
