"""``bench/floor.rescored_agreement``: it must tell an exact search from a changed one."""

from __future__ import annotations

import numpy as np
import torch

from bench.floor import rescored_agreement
from mimea.service.index import build_index


def _unit(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))


def test_agreement_is_total_for_the_rescored_scan_and_partial_for_other_vectors() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.normal(size=(3000, 64)))
    biases = torch.from_numpy(0.2 * rng.normal(size=(3000, 1))).float()
    queries = _unit(vectors[:200].numpy() + 0.3 * rng.normal(size=(200, 64)))
    exact = build_index(vectors, biases, precision="float32")
    for precision in ("bfloat16", "int8"):
        same = rescored_agreement(exact, build_index(vectors, biases, precision=precision),
                                  queries, 0, k=20)
        assert same["queries"] == 200
        assert same["same_scores"] == 1.0 and same["same_ids"] == 1.0
    moved = build_index(_unit(vectors.numpy() + 0.2 * rng.normal(size=vectors.shape)), biases)
    changed = rescored_agreement(exact, moved, queries, 0, k=20)
    assert changed["same_scores"] < 0.5 and changed["max_score_difference"] > 1e-3
