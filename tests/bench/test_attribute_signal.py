"""The attribute-signal probe (bench/attribute_signal.py) on a synthetic KG pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import attribute_signal
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair


def test_ranks_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    pair = tmp_path / "pair"
    write_synthetic_pair(pair, SyntheticSpec(num_entities=300))
    monkeypatch.setattr(sys, "argv", ["attribute_signal.py", "--data", str(pair)])
    assert attribute_signal.main() == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 5  # header and four variants
    for row in rows[1:]:
        hits1, hits10, mrr = (float(cell) for cell in row.strip("| ").split(" | ")[1:])
        assert 0.0 <= hits1 <= hits10 <= 1.0 and 0.0 < mrr <= 1.0


def test_skips_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["attribute_signal.py", "--data", str(tmp_path / "absent")])
    assert attribute_signal.main() == 0
    assert "skipping" in capsys.readouterr().out
