"""Accuracy benchmark: train and evaluate MIMEA on the real benchmark pairs.

Runs the full model on DBP15K zh_en (30% seeds) and FB15K-DB15K (20% seeds), optionally the
iterative variant and the ablations (each module and each modality off), and writes
``bench/results/accuracy.json`` and the ``## Accuracy`` table of ``BENCHMARKS.md``.

    python -m bench.accuracy                       # full runs
    python -m bench.accuracy --only ablations --ablation-epochs 20
    python -m bench.accuracy --only zh_en --keep-checkpoints checkpoints
    python -m bench.accuracy --only zh_en --record CKPT   # a run made with `mimea train`

Every run appends to the results file as soon as it ends, so a long sweep can be resumed
with ``--skip-done``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from mimea.model.config import load_config, saved_config
from mimea.training.pipeline import run_training

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "accuracy.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"

DATASETS = {"dbp15k/zh_en": 0.3, "fbdb15k": 0.2}
# Configuration of each dataset's runs when no --config is given (None: the defaults).
DATASET_CONFIGS: dict[str, Path | None] = {"dbp15k/zh_en": None,
                                           "fbdb15k": ROOT / "configs" / "fbdb15k.toml"}
# Pseudo-labelling of the iterative runs: two label rounds, then two network rounds.
# The published iterative figures were measured with a step per batch in the network rounds.
ITERATIVE = ["training.label_rounds=2", "training.iterations=2", "training.steps_per_epoch=0"]
NOT_ITERATIVE = ["training.label_rounds=0", "training.iterations=0"]
ABLATIONS: dict[str, list[str]] = {
    "w/o attribute-seeded structure stack": ["model.structure_features=[]"],
    "w/o proxy matching": ["model.proxies=0"],
    "+ learned fusion (Beta confidences)": ["model.fusion=true"],
    "w/o OT alignment": ["model.ot_alignment=false"],
    "w/o modal contrastive": ["model.modal_contrastive=false"],
    "w/o structure": ["model.modalities.structure=false"],
    "+ relation-bag MLP": ["model.modalities.relation=true"],
    "w/o relation types (structure blind to them, no bag)": ["model.relation_aware=false"],
    "w/o attributes": ["model.modalities.attribute=false"],
    "w/o seed-label propagation": ["model.propagation=false"],
}


def run_one(dataset: str, variant: str, overrides: list[str], config_file: Path | None,
            iterative: bool, keep: Path | None = None) -> list[dict[str, Any]]:
    """Train one variant and return its rows for ``accuracy.json``.

    An iterative run also yields the non-iterative row: its first stage is exactly the
    non-iterative training (same seed and schedule), evaluated before pseudo-labelling.
    With ``keep``, the checkpoint is written there (e.g. for the serving benchmark).
    """
    train_ratio = DATASETS[dataset]
    config = load_config(config_file or DATASET_CONFIGS[dataset],
                         [f"data.train_ratio={train_ratio}",
                          *(ITERATIVE if iterative else NOT_ITERATIVE), *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_training(DATA / dataset, keep or Path(tmp) / "checkpoint", config,
                               progress=False)
    return rows_of(dataset, train_ratio, iterative, variant, overrides, metrics)


def rows_of(dataset: str, train_ratio: float, iterative: bool, variant: str,
            overrides: list[str], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``accuracy.json`` rows of one run's ``metrics.json`` (two for an iterative run)."""
    ranking = metrics.get("headline", "csls")  # runs before eval.headline: CSLS
    rows = [_row(dataset, train_ratio, iterative, variant, overrides, metrics["test"], ranking,
                 metrics["epochs"], metrics["best_epoch"], metrics["wall_s"],
                 metrics["s_per_epoch"])]
    if "base" in metrics:
        base = metrics["base"]
        rows.insert(0, _row(dataset, train_ratio, False, variant, overrides, base["test"],
                            ranking, base["epochs"], base["best_epoch"], base["train_s"],
                            base["train_s"] / max(base["epochs"], 1)))
    return rows


def _row(dataset: str, train_ratio: float, iterative: bool, variant: str,
         overrides: list[str], test: dict[str, Any], ranking: str, epochs: int,
         best_epoch: int, wall_s: float, s_per_epoch: float) -> dict[str, Any]:
    headline = test[ranking]["kg1_to_kg2"]
    return {
        "dataset": dataset, "train_ratio": train_ratio, "iterative": iterative,
        "variant": variant, "overrides": overrides, "ranking": ranking,
        "hits1": round(headline["hits1"], 4), "hits10": round(headline["hits10"], 4),
        "mrr": round(headline["mrr"], 4), "mr": round(headline["mr"], 2),
        "cosine_hits1": round(test["cosine"]["kg1_to_kg2"]["hits1"], 4),
        "reverse_hits1": round(test[ranking]["kg2_to_kg1"]["hits1"], 4),
        "csls_hits1": round(test["csls"]["kg1_to_kg2"]["hits1"], 4),
        "csls_mrr": round(test["csls"]["kg1_to_kg2"]["mrr"], 4),
        "sinkhorn_hits1": round(test["sinkhorn"]["kg1_to_kg2"]["hits1"], 4),
        "sinkhorn_mrr": round(test["sinkhorn"]["kg1_to_kg2"]["mrr"], 4),
        "epochs": epochs, "best_epoch": best_epoch,
        "wall_s": round(wall_s, 1), "s_per_epoch": round(s_per_epoch, 2),
    }


def plan(only: str | None, ablation_epochs: int) -> list[tuple[str, str, list[str], bool]]:
    runs: list[tuple[str, str, list[str], bool]] = []
    if only in (None, "zh_en"):
        runs.append(("dbp15k/zh_en", "full", [], True))
    if only in (None, "fbdb15k"):
        runs.append(("fbdb15k", "full", [], False))
    if only in (None, "ablations"):
        short = [f"training.epochs={ablation_epochs}"]
        runs.append(("dbp15k/zh_en", f"full ({ablation_epochs} epochs)", short, False))
        for name, overrides in ABLATIONS.items():
            runs.append(("dbp15k/zh_en", f"{name} ({ablation_epochs} epochs)",
                         [*short, *overrides], False))
    return runs


def load_results() -> dict[str, Any]:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text(encoding="utf-8"))
    return {"runs": []}


def save_results(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_table(results)


def save_rows(rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` to the results file, each replacing the row of the same dataset, variant
    and iterative flag."""
    def key(row: dict[str, Any]) -> tuple[str, str, bool]:
        return row["dataset"], row["variant"], row["iterative"]

    results = load_results()
    replaced = {key(row) for row in rows}
    results["runs"] = [r for r in results["runs"] if key(r) not in replaced] + rows
    save_results(results)


def write_table(results: dict[str, Any]) -> None:
    """Replace the ``## Accuracy`` results table in BENCHMARKS.md (other sections kept)."""
    lines = ["| dataset | seeds | iterative | variant | ranking | Hits@1 | Hits@10 | MRR | MR | "
             "Hits@1 (cos) | Hits@1 KG2→KG1 | Hits@1 / MRR (CSLS) | Hits@1 / MRR (Sinkhorn) "
             "| epochs | wall (s) | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(
            f"| {r['dataset']} | {r['train_ratio']:.0%} | {'yes' if r['iterative'] else 'no'} "
            f"| {r['variant']} | {r.get('ranking', 'csls')} | {r['hits1']:.3f} "
            f"| {r['hits10']:.3f} | {r['mrr']:.3f} | {r['mr']:.1f} | {r['cosine_hits1']:.3f} "
            f"| {r['reverse_hits1']:.3f} | {_pair(r, 'csls')} | {_pair(r, 'sinkhorn')} "
            f"| {r['epochs']} | {r['wall_s']:.0f} | {r['s_per_epoch']:.1f} |")
    table = "\n".join(lines)
    begin, end = "<!-- accuracy-table:begin -->", "<!-- accuracy-table:end -->"
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Accuracy\n\n{block}\n"
    BENCHMARKS.write_text(text, encoding="utf-8")


def _pair(row: dict[str, Any], ranking: str) -> str:
    """Hits@1 / MRR of one ranking; rows from before the CSLS columns had CSLS as headline,
    rows from before the Sinkhorn ranking have none."""
    if f"{ranking}_hits1" in row:
        return f"{row[f'{ranking}_hits1']:.3f} / {row[f'{ranking}_mrr']:.3f}"
    if ranking == row.get("ranking", "csls"):
        return f"{row['hits1']:.3f} / {row['mrr']:.3f}"
    return "–"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["zh_en", "fbdb15k", "ablations"])
    parser.add_argument("--config", type=Path, help="configuration file for every run "
                        "(default: each dataset's own, see DATASET_CONFIGS)")
    parser.add_argument("--ablation-epochs", type=int, default=6)
    parser.add_argument("--keep-checkpoints", type=Path, metavar="DIR",
                        help="write each full (non-ablation) checkpoint under DIR")
    parser.add_argument("--shard", metavar="I/N", help="run every N-th planned run from the I-th")
    parser.add_argument("--skip-done", action="store_true",
                        help="skip runs already in the results file")
    parser.add_argument("--reverse", action="store_true",
                        help="run the plan from its end, so that a second process with "
                        "--skip-done can work through it from the other side")
    parser.add_argument("--record", type=Path, metavar="CKPT",
                        help="instead of training, add the rows of a checkpoint written by "
                        "`mimea train` on the --only dataset (its metrics.json)")
    parser.add_argument("--variant", default="full", help="variant name of --record's rows")
    args = parser.parse_args()
    if args.record:
        return record(args.record, args.only, args.variant)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_flush_denormal(True)  # as `mimea train` does (training/cli.py)
    missing = [d for d in DATASETS if not (DATA / d).is_dir()]
    if missing:
        print(f"skipping the accuracy benchmark: {', '.join(str(DATA / d) for d in missing)} "
              "not found (the benchmark needs the shared data folder)")
        return 0
    runs = plan(args.only, args.ablation_epochs)
    if args.shard:
        index, count = (int(x) for x in args.shard.split("/"))
        runs = runs[index - 1::count]
    if args.reverse:
        runs.reverse()
    for dataset, variant, overrides, iterative in runs:
        done = any(r["dataset"] == dataset and r["variant"] == variant
                   and r["iterative"] == iterative for r in load_results()["runs"])
        if done and args.skip_done:
            continue
        keep = None
        if args.keep_checkpoints and variant == "full":
            name = dataset.replace("/", "_") + ("_iterative" if iterative else "")
            keep = args.keep_checkpoints / name
        for row in run_one(dataset, variant, overrides, args.config, iterative, keep):
            print(json.dumps(row), flush=True)
            save_rows([row])  # one row at a time: another shard may have written meanwhile
    return 0


def record(checkpoint: Path, only: str | None, variant: str) -> int:
    """Add the rows of a finished ``mimea train`` run, replacing those of the same variant."""
    dataset = {"zh_en": "dbp15k/zh_en", "fbdb15k": "fbdb15k"}.get(only or "")
    if dataset is None:
        print("error: --record needs --only zh_en or --only fbdb15k")
        return 2
    try:
        metrics = json.loads((checkpoint / "metrics.json").read_text(encoding="utf-8"))
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {checkpoint} is not a readable checkpoint: {exc}")
        return 2
    try:
        saved = saved_config(config)
    except ValueError as exc:
        print(f"error: {checkpoint}: {exc}")
        return 2
    rows = rows_of(dataset, saved.data.train_ratio, saved.training.pseudo_labelling, variant, [],
                   metrics)
    save_rows(rows)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
