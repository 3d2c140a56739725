"""``bench/results/scale.json``, the file the scale benchmarks share (decode, evaluate, train,
align, serve rows): one row per task, dataset, size, process count and thread count; and how
those benchmarks measure a step run in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.json"
# Runs sys.argv[1:] and prints its wall seconds and its peak RSS (MB) on stderr's last line.
_MEASURE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
            "code = subprocess.run(sys.argv[1:]).returncode; "
            "print(time.perf_counter() - start, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr); "
            "sys.exit(code)")


def measured_run(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` from the checkout; return its wall seconds, its peak RSS in MB and its
    stdout (CalledProcessError if it fails).

    It runs under a wrapper process of its own: a process's children's peak RSS is the largest
    of all its children so far, so steps measured from one process would hide a step's peak
    behind an earlier, larger one.
    """
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
    wall, peak = done.stderr.split()[-2:]
    return float(wall), float(peak), done.stdout


def _key(row: dict[str, Any]) -> tuple[str, str, int, int, int, tuple[str, ...]]:
    """What a row measures: a run with other configuration overrides is another row."""
    return (row["task"], row["dataset"], row["entities_per_kg"], row.get("processes") or 1,
            row.get("threads") or 1, tuple(row.get("overrides") or ()))


def save_rows(rows: list[dict[str, Any]], path: Path = RESULTS) -> None:
    """Merge ``rows`` into the file, replacing the rows of the same key."""
    results = (json.loads(path.read_text(encoding="utf-8")) if path.is_file()
               else {"rows": []})
    new = {_key(row) for row in rows}
    results["rows"] = [r for r in results["rows"] if _key(r) not in new] + rows
    results["rows"].sort(key=_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
