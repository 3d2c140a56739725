"""bench/train_end_to_end.py: a real ``mimea train`` on a small synthetic pair, measured from
outside, gives a complete scale.json row."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.train_end_to_end import demo_data, train_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_row_of_a_small_end_to_end_run(tmp_path: Path) -> None:
    data = demo_data(tmp_path, 600)
    row = train_row(data, tmp_path / "ckpt", ROOT / "configs" / "demo.toml", 1,
                    ["training.epochs=2"])
    assert row["task"] == "train-end-to-end" and row["threads"] == 1
    assert row["entities_per_kg"] == 570
    assert row["epochs"] == 2 and row["wall_s"] > 0 and row["peak_rss_mb"] > 100
    assert 0.0 <= row["hits1"] <= row["mrr"] <= 1.0
    assert {"training", "evaluation"} <= set(row["seconds"])
    assert (tmp_path / "ckpt" / "metrics.json").is_file()
