"""The CSLS-k and label-settings sweep (bench/csls_k.py) on a trained synthetic checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import csls_k
from mimea.model.config import load_config
from mimea.training.pipeline import run_training
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair


def test_sweeps_the_grid_and_reproduces_the_checkpoints_own_test_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair, checkpoint, out = tmp_path / "pair", tmp_path / "checkpoint", tmp_path / "sweep.json"
    write_synthetic_pair(pair, SyntheticSpec(num_entities=300, seed=3))
    config = load_config(None, ["model.hidden_dim=16", "training.epochs=2", "loss.negatives=64",
                                "training.device=cpu", "model.propagation_dim=16",
                                "eval.csls_k=2"])
    metrics = run_training(pair, checkpoint, config, progress=False)
    monkeypatch.setattr(sys, "argv", [
        "csls_k.py", "--checkpoint", str(checkpoint), "--data", str(pair), "--k", "1", "2",
        "--weight", "0.5", "1.5", "--dim", "16", "32", "--hops", "2", "--out", str(out),
        "--sinkhorn-reg", str(config.eval.sinkhorn_reg), "0.05"])
    assert csls_k.main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["dim"], r["weight"], r["k"], r.get("sinkhorn_reg", 0)) for r in rows) == [
        (d, w, k, reg) for d in (16, 32) for w in (0.5, 1.5) for k in (1, 2)
        for reg in (0, config.eval.sinkhorn_reg, 0.05)]
    # At the checkpoint's own settings the labels are rebuilt exactly as training built them.
    own = [r for r in rows if (r["dim"], r["weight"], r["k"]) == (16, 0.5, 2)]
    assert own[0]["test"] == pytest.approx(metrics["test"]["csls"]["kg1_to_kg2"])
    # The plan divides scores by its small entropy, so the rebuilt labels' float32 rounding
    # can swap a near-tie: one pair of 189 at most.
    sinkhorn = metrics["test"]["sinkhorn"]["kg1_to_kg2"]
    assert own[1]["test"]["hits1"] == pytest.approx(sinkhorn["hits1"], abs=1.01 / 189)
    assert own[1]["test"]["mrr"] == pytest.approx(sinkhorn["mrr"], abs=1.01 / 189)
    assert len({r["test"]["mrr"] for r in rows}) > 1  # the settings change the ranking


def test_skips_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["csls_k.py", "--checkpoint", str(tmp_path / "ck"),
                                      "--data", str(tmp_path / "absent")])
    assert csls_k.main() == 0
    assert "skipped" in capsys.readouterr().out
