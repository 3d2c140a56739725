"""Alignment decisions: precision, recall and calibration of the decided alignment, and the
time ``mimea align`` takes to write it.

For each data set the checkpoint is decided (``training/calibration.py``: probabilities fitted
on the validation pairs, the default threshold chosen for 0.95 expected precision) and scored
on its test pairs at the default threshold and a few fixed ones: precision (decided test
sources paired with their gold counterpart), recall (test sources decided with it), ECE of
every decoded test source's probability (10 bins), and the F1 of the "has a counterpart"
decision over every unseeded KG1 entity (DBP15K: entities outside the gold pairs count as
having none). Rows go to ``bench/results/decisions.json``, a reliability diagram and a
precision-recall curve per data set to ``bench/results/decisions_<dataset>_*.png``.

- ``zh_en``: the trained DBP15K zh_en checkpoint (read only), written with its decisions to
  ``--decided`` (reused when it already holds them), which ``mimea align`` then writes out:
  that timing (a fresh process, load included) is merged into ``bench/results/scale.json``;
- ``synthetic``: a synthetic pair with 20% of each KG's entities in that KG only, trained here.

    python -m bench.decisions [--datasets zh_en synthetic] [--checkpoint /work/ckpts/zh_en]
        [--decided /work/ckpts/zh_en_decisions] [--redecide]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.scale_results import measured_run
from bench.scale_results import save_rows as save_scale_rows
from mimea.model.checkpoint import load_checkpoint
from mimea.model.config import load_config
from mimea.model.decisions import Decisions, stored_decisions
from mimea.training.calibration import (
    decide_checkpoint,
    decision_metrics,
    expected_calibration_error,
    record_decisions,
    write_decisions,
)
from mimea.training.pipeline import run_training, split_rows
from mimea.training.synthetic import SyntheticSpec, write_synthetic_pair

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
ZH_EN = Path("/work/ckpts/zh_en")
DECIDED = Path("/work/ckpts/zh_en_decisions")
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)
SYNTHETIC = SyntheticSpec(num_entities=4000, dangling=0.2, seed=0)
SYNTHETIC_OVERRIDES = ["model.hidden_dim=64", "training.epochs=30", "loss.negatives=256",
                       "training.device=cpu"]
RELIABILITY_BINS = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["zh_en", "synthetic"],
                        choices=["zh_en", "synthetic"])
    parser.add_argument("--checkpoint", type=Path, default=ZH_EN)
    parser.add_argument("--decided", type=Path, default=DECIDED)
    parser.add_argument("--redecide", action="store_true",
                        help="decide zh_en again even if --decided holds decisions")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if "zh_en" in args.datasets:
        rows += zh_en_rows(args.checkpoint, args.decided, redecide=args.redecide)
        save_scale_rows([time_align(args.decided)])
    if "synthetic" in args.datasets:
        rows += synthetic_rows()
    save_rows(rows)
    for row in rows:
        print(json.dumps(row))
    return 0


def zh_en_rows(source: Path, decided: Path, *, redecide: bool) -> list[dict[str, Any]]:
    """Decide the zh_en checkpoint into ``decided`` (unless it already holds decisions)."""
    seconds = None
    if redecide or not (decided.exists() and load_checkpoint(decided).decisions is not None):
        start = time.perf_counter()
        decisions = decide_checkpoint(source)
        seconds = time.perf_counter() - start
        write_decisions(source, decisions, out=decided)
    return scored_rows("zh_en", decided, decide_s=seconds)


def synthetic_rows() -> list[dict[str, Any]]:
    """Train on a synthetic pair with dangling entities, decide it as training does."""
    with tempfile.TemporaryDirectory(prefix="decisions-") as tmp:
        pair, checkpoint = Path(tmp) / "pair", Path(tmp) / "checkpoint"
        write_synthetic_pair(pair, SYNTHETIC)
        run_training(pair, checkpoint, load_config(None, SYNTHETIC_OVERRIDES), progress=False)
        start = time.perf_counter()
        record_decisions(checkpoint)
        return scored_rows("synthetic", checkpoint, decide_s=time.perf_counter() - start)


def scored_rows(dataset: str, path: Path, *, decide_s: float | None) -> list[dict[str, Any]]:
    """The default threshold's row (``"default": true``) and one per fixed threshold, and
    the data set's plots."""
    checkpoint = load_checkpoint(path)
    decisions = stored_decisions(checkpoint)
    assert decisions is not None
    test, kgs = split_rows(checkpoint, "test"), np.asarray(checkpoint.entities.kgs)
    gold = sum(len(checkpoint.split[part]) for part in ("train", "valid", "test"))
    common = {"dataset": dataset, "train_ratio": checkpoint.split.get("train_ratio"),
              "dangling_share": round(1 - gold / int((kgs == 1).sum()), 4),
              "target_precision": decisions.target_precision,
              "ranking_hits1": round(checkpoint.metrics["test"]["sinkhorn"]["kg1_to_kg2"]["hits1"],
                                     4)}
    rows = []
    for threshold in (decisions.threshold, *THRESHOLDS):
        metrics = decision_metrics(decisions, test, kgs, threshold=threshold)
        rows.append({**common, **{k: _rounded(v) for k, v in metrics.items()},
                     "ece15": _rounded(test_ece(decisions, test, bins=15))})
    rows[0].update(default=True, decide_s=None if decide_s is None else round(decide_s, 1))
    plot(dataset, decisions, test)
    return rows


def test_ece(decisions: Decisions, test: np.ndarray, *, bins: int) -> float:
    probability, right = decoded_test(decisions, test)
    return expected_calibration_error(probability, right, bins)


def decoded_test(decisions: Decisions, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability and correctness of each test source with a decoded pairing."""
    counterpart = decisions.tables.counterpart.numpy()[test[:, 0]]
    decoded = counterpart >= 0
    probability = decisions.tables.probability.numpy()[test[:, 0]][decoded]
    return probability, (counterpart == test[:, 1])[decoded]


def plot(dataset: str, decisions: Decisions, test: np.ndarray) -> None:
    """Reliability diagram and precision-recall curve of the test sources."""
    probability, right = decoded_test(decisions, test)
    plot_reliability(dataset, probability, right)
    plot_precision_recall(dataset, probability, right, len(test), decisions.threshold)


def plot_reliability(dataset: str, probability: np.ndarray, right: np.ndarray) -> None:
    """Share right against mean probability per bin (pair counts beside the points)."""
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    index = np.clip((probability * RELIABILITY_BINS).astype(int), 0, RELIABILITY_BINS - 1)
    used = np.unique(index)
    mean_p = [probability[index == b].mean() for b in used]
    accuracy = [right[index == b].mean() for b in used]
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    axis.plot(mean_p, accuracy, marker="o")
    for x, y, b in zip(mean_p, accuracy, used, strict=True):
        axis.annotate(str(int((index == b).sum())), (x, y), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    axis.set(xlabel="predicted match probability", ylabel="share right (test sources)",
             title=f"{dataset}: ECE {expected_calibration_error(probability, right):.3f}",
             xlim=(0, 1), ylim=(0, 1.02))
    figure.tight_layout()
    figure.savefig(RESULTS / f"decisions_{dataset}_reliability.png", dpi=120)
    plt.close(figure)


def plot_precision_recall(dataset: str, probability: np.ndarray, right: np.ndarray,
                          sources: int, threshold: float) -> None:
    """Precision against recall as the threshold falls, the default threshold marked."""
    order = np.argsort(-probability, kind="stable")
    hits = np.cumsum(right[order])
    precision, recall = hits / np.arange(1, len(order) + 1), hits / sources
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(recall, precision)
    chosen = np.flatnonzero(probability[order] >= threshold)
    if len(chosen):
        axis.plot(recall[chosen[-1]], precision[chosen[-1]], marker="o", color="red",
                  label=f"default threshold {threshold:.3f}")
        axis.legend(loc="lower left")
    axis.set(xlabel="recall (test sources)", ylabel="precision", title=f"{dataset}: decisions",
             xlim=(0, 1), ylim=(0.5, 1.01))
    figure.tight_layout()
    figure.savefig(RESULTS / f"decisions_{dataset}_pr.png", dpi=120)
    plt.close(figure)


def time_align(decided: Path) -> dict[str, Any]:
    """``mimea align`` on ``decided`` in a fresh process: wall time and peak RSS."""
    checkpoint = load_checkpoint(decided)
    with tempfile.TemporaryDirectory(prefix="align-") as tmp:
        out = Path(tmp) / "alignment.tsv"
        wall, peak_mb, _ = measured_run([str(Path(sys.executable).parent / "mimea"), "align",
                                         "--checkpoint", str(decided), "--out", str(out)])
        lines = sum(1 for _ in out.open(encoding="utf-8")) - 1
    return {"task": "align", "dataset": "zh_en",
            "entities_per_kg": round(len(checkpoint.entities) / 2), "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak_mb), "rows": lines, "format": "tsv"}


def save_rows(rows: list[dict[str, Any]]) -> None:
    """Replace the rows of the data sets just measured in decisions.json."""
    path = RESULTS / "decisions.json"
    kept = json.loads(path.read_text(encoding="utf-8"))["rows"] if path.is_file() else []
    measured = {row["dataset"] for row in rows}
    results = {"rows": [r for r in kept if r["dataset"] not in measured] + rows}
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _rounded(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


if __name__ == "__main__":
    raise SystemExit(main())
