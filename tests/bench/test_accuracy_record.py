"""Recording a finished training run into the accuracy results (bench/accuracy.py --record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import accuracy
from mimea.model.config import load_config
from mimea.training.pipeline import run_training
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An accuracy.json and BENCHMARKS.md of the test's own, with one other run in them."""
    path = tmp_path / "accuracy.json"
    other = {"dataset": "fbdb15k", "train_ratio": 0.2, "iterative": False, "variant": "full",
             "hits1": 0.5, "hits10": 0.7, "mrr": 0.6, "mr": 9.0, "cosine_hits1": 0.4,
             "reverse_hits1": 0.5, "epochs": 3, "wall_s": 1.0, "s_per_epoch": 0.3}
    path.write_text(json.dumps({"runs": [other]}))
    monkeypatch.setattr(accuracy, "RESULTS", path)
    monkeypatch.setattr(accuracy, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    return path


def test_record_adds_an_iterative_runs_two_rows_and_replaces_them_when_rerun(
        tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair, checkpoint = tmp_path / "pair", tmp_path / "checkpoint"
    write_synthetic_pair(pair, SyntheticSpec(num_entities=300, seed=5))
    config = load_config(None, ["model.hidden_dim=16", "training.epochs=2",
                                "loss.negatives=64", "training.device=cpu",
                                "training.label_rounds=2", "training.iterations=1",
                                "training.iteration_epochs=1"])
    metrics = run_training(pair, checkpoint, config, progress=False)
    for _ in range(2):
        assert accuracy.record(checkpoint, "zh_en", "tiny") == 0
    runs = json.loads(results.read_text())["runs"]
    assert [(r["dataset"], r["variant"], r["iterative"]) for r in runs] == [
        ("fbdb15k", "full", False), ("dbp15k/zh_en", "tiny", False),
        ("dbp15k/zh_en", "tiny", True)]
    assert runs[2]["mrr"] == round(metrics["test"]["sinkhorn"]["kg1_to_kg2"]["mrr"], 4)
    assert runs[1]["mrr"] == round(metrics["base"]["test"]["sinkhorn"]["kg1_to_kg2"]["mrr"], 4)
    assert runs[2]["csls_mrr"] == round(metrics["test"]["csls"]["kg1_to_kg2"]["mrr"], 4)
    assert [r.get("ranking") for r in runs] == [None, "sinkhorn", "sinkhorn"]
    table = (tmp_path / "BENCHMARKS.md").read_text()
    assert table.count("| dbp15k/zh_en | 30% |") == 2
    # the older row, measured before the headline was named, shows CSLS as its ranking
    assert "| fbdb15k | 20% | no | full | csls | 0.500 |" in table
    assert "| 0.500 / 0.600 | – |" in table


def test_record_names_an_unreadable_checkpoint(tmp_path: Path, results: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert accuracy.record(tmp_path / "missing", "zh_en", "tiny") == 2
    assert "missing is not a readable checkpoint" in capsys.readouterr().out
    assert len(json.loads(results.read_text())["runs"]) == 1
