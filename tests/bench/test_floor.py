"""``bench/floor.bfloat16_agreement``: it must tell an exact search from a changed one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.floor import bfloat16_agreement
from service.index import build_index


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_agreement_is_total_for_the_rescored_scan_and_partial_for_other_vectors() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(3000, 64)))
    queries = _unit(vectors[:200] + 0.3 * rng.normal(size=(200, 64)))
    exact = build_index(vectors, precision="float32")
    same = bfloat16_agreement(exact, build_index(vectors, precision="bfloat16"), queries, k=20)
    assert same["queries"] == 200
    assert same["same_scores"] == 1.0 and same["same_ids"] == 1.0
    moved = build_index(_unit(vectors + 0.2 * rng.normal(size=vectors.shape)))
    changed = bfloat16_agreement(exact, moved, queries, k=20)
    assert changed["same_scores"] < 0.5 and changed["max_score_difference"] > 1e-3
