"""Random train/valid/test split of the gold pairs, made at run time from a ratio and a seed.

The validation pairs are carved out of the training seeds (never out of the test pairs), so
model selection sees only what a user with ``train_ratio`` of the links would have.
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
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    pairs = np.asarray(gold, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"gold must have shape [P, 2], got {tuple(pairs.shape)}")
    shuffled = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    num_seeds = round(train_ratio * len(pairs))
    num_valid = round(valid_fraction * num_seeds)
    seeds = shuffled[:num_seeds]
    return AlignmentSplit(train=seeds[num_valid:].copy(), valid=seeds[:num_valid].copy(),
                          test=shuffled[num_seeds:].copy())
