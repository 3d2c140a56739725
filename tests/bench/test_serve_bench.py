"""``python -m bench.serve --quick`` on a tiny synthetic checkpoint: schema and zero errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark against a server process

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {"route", "cache", "concurrency", "requests", "errors", "rps", "p50_ms", "p95_ms",
            "p99_ms", "rss_mb"}


def test_quick_bench_writes_schema_with_no_errors(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--quick", "--tiny",
         "--soak-seconds", "3", "--scaling-sizes", "2000", "--search-precision", "bfloat16",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["search_precision"] == "bfloat16"
    assert result["floor"]["search_precision"] == "bfloat16"
    assert result["floor"]["bf16_rescored_batch32_ms"] > 0
    agreement = result["floor"]["bf16_agreement_top50"]
    assert agreement["queries"] > 0 and agreement["same_scores"] == 1.0
    rows = result["rows"]
    caches = {r["cache"] for r in rows}
    assert "off" in caches
    expected = {"off", "cold", "warm"} if "cold" in caches else {"off"}
    for route in ("candidates", "align"):
        for cache in expected:
            assert sorted(r["concurrency"] for r in rows
                          if r["route"] == route and r["cache"] == cache) == [1, 8, 32]
    for row in rows:
        assert row.keys() >= ROW_KEYS
        assert row["errors"] == 0
        assert row["requests"] > 0 and row["rps"] > 0 and row["rss_mb"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    floor = result["floor"]
    for key in ("faiss_single_ms", "faiss_batch32_ms", "torch_single_ms", "torch_batch32_ms"):
        assert floor[key] > 0
    assert {s["kind"] for s in result["scaling"]} >= {"flat", "ivf"}
    assert all(0.0 <= s["recall_at_10"] <= 1.0 for s in result["scaling"])
    assert result["soak"]["errors"] == 0 and len(result["soak"]["samples"]) >= 2
