"""Random train/valid/test split of the gold pairs, made at run time from a ratio and a seed.

The validation pairs are carved out of the training seeds (never out of the test pairs), so
model selection sees only what a user with ``train_ratio`` of the links would have.
The loader makes the gold one-to-one; identical rows are still dropped here, since a pair in
two parts would be trained on and tested on at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class AlignmentSplit:
    """Disjoint sets of gold pairs, each int64 [*, 2] of (kg1_row, kg2_row)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def split_pairs(gold: np.ndarray, *, train_ratio: float = 0.3, valid_fraction: float = 0.1,
                seed: int = 42) -> AlignmentSplit:
    """Shuffle ``gold`` with ``numpy.random.default_rng(seed)`` and cut it.

    The first ``round(train_ratio * P)`` shuffled pairs are the seeds; ``round(valid_fraction *
    seeds)`` of them become the validation set, the others the training set; the rest is test.
    P counts distinct pairs: a repeated row is dropped, the first one kept. ``ValueError`` if
    the training or the test part would be empty.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    pairs = np.asarray(gold, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"gold must have shape [P, 2], got {tuple(pairs.shape)}")
    pairs = _distinct_rows(pairs)
    shuffled = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    num_seeds = round(train_ratio * len(pairs))
    num_valid = round(valid_fraction * num_seeds)
    empty = [part for part, size in (("training", num_seeds - num_valid),
                                     ("test", len(pairs) - num_seeds)) if size < 1]
    if empty:
        raise ValueError(f"{len(pairs)} distinct gold pairs leave no {' and no '.join(empty)} "
                         f"pair at train_ratio {train_ratio} and valid_fraction {valid_fraction}; "
                         f"more gold pairs or another train_ratio are needed")
    seeds = shuffled[:num_seeds]
    return AlignmentSplit(train=seeds[num_valid:].copy(), valid=seeds[:num_valid].copy(),
                          test=shuffled[num_seeds:].copy())


def _distinct_rows(pairs: np.ndarray) -> np.ndarray:
    """``pairs`` without repeated rows, first occurrences kept in their order."""
    _, first = np.unique(pairs, axis=0, return_index=True)
    return pairs[np.sort(first)]
