"""Random train/valid/test split of gold pairs (training/split.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mimea.training.split import split_pairs

GOLD = np.stack([np.arange(1000), np.arange(1000, 2000)], axis=1).astype(np.int64)


def _as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in pairs}


@pytest.mark.parametrize(("train_ratio", "valid_fraction", "sizes"),
                         [(0.3, 0.1, (270, 30, 700)), (0.2, 0.0, (200, 0, 800)),
                          (0.8, 0.25, (600, 200, 200))])
def test_sizes(train_ratio: float, valid_fraction: float, sizes: tuple[int, int, int]) -> None:
    split = split_pairs(GOLD, train_ratio=train_ratio, valid_fraction=valid_fraction)
    assert (len(split.train), len(split.valid), len(split.test)) == sizes
    assert split.sizes() == dict(zip(("train", "valid", "test"), sizes, strict=True))
    assert split.train.dtype == np.int64 and split.valid.shape[1:] == (2,)


def test_disjoint_and_covering() -> None:
    split = split_pairs(GOLD, seed=3)
    parts = [_as_set(split.train), _as_set(split.valid), _as_set(split.test)]
    assert sum(len(p) for p in parts) == len(GOLD)
    assert set.union(*parts) == _as_set(GOLD)


def test_deterministic_for_a_seed() -> None:
    a, b = split_pairs(GOLD, seed=11), split_pairs(GOLD, seed=11)
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_different_seeds_differ() -> None:
    assert _as_set(split_pairs(GOLD, seed=1).train) != _as_set(split_pairs(GOLD, seed=2).train)


def test_input_is_not_modified() -> None:
    gold = GOLD.copy()
    split_pairs(gold)
    np.testing.assert_array_equal(gold, GOLD)


@pytest.mark.parametrize(("kwargs", "message"),
                         [({"train_ratio": 0.0}, "train_ratio"),
                          ({"train_ratio": 1.0}, "train_ratio"),
                          ({"train_ratio": -0.2}, "train_ratio"),
                          ({"valid_fraction": 1.0}, "valid_fraction"),
                          ({"valid_fraction": -0.1}, "valid_fraction")])
def test_bad_ratios_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_pairs(GOLD, **kwargs)


def test_bad_shape_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        split_pairs(np.zeros((4, 3), np.int64))


def test_repeated_rows_are_dropped_first_kept() -> None:
    gold = np.concatenate([GOLD[:10], GOLD[3:5], GOLD[10:20]])
    split = split_pairs(gold, train_ratio=0.5, valid_fraction=0.0, seed=2)
    parts = [_as_set(split.train), _as_set(split.test)]
    assert len(split.train) + len(split.test) == 20
    assert not parts[0] & parts[1] and set.union(*parts) == _as_set(GOLD[:20])
    # without repeats the split is the one the distinct pairs give
    plain = split_pairs(GOLD[:20], train_ratio=0.5, valid_fraction=0.0, seed=2)
    np.testing.assert_array_equal(split.train, plain.train)


@pytest.mark.parametrize(("pairs", "train_ratio", "message"),
                         [(0, 0.3, "0 distinct gold pairs leave no training and no test pair"),
                          (1, 0.3, "1 distinct gold pairs leave no training pair"),
                          (2, 0.2, "leave no training pair at train_ratio 0.2"),
                          (2, 0.8, "2 distinct gold pairs leave no test pair")])
def test_empty_part_rejected(pairs: int, train_ratio: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_pairs(GOLD[:pairs], train_ratio=train_ratio)


def test_two_pairs_are_enough_at_the_default_ratio() -> None:
    assert split_pairs(GOLD[:2]).sizes() == {"train": 1, "valid": 0, "test": 1}
