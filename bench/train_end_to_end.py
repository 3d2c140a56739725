"""``mimea train`` end to end on synthetic KG pairs: training, model selection, evaluation,
the checkpoint and its alignment decisions, as a user runs it, with the default configuration.

Each size is generated with ``mimea demo-data --entities N`` (skipped when ``WORK/dN`` exists)
and trained in a process of its own with ``OMP_NUM_THREADS`` set to ``--threads``; its wall
time and peak RSS are measured from outside. Rows (task ``train-end-to-end``) go to
``bench/results/scale.json`` with the headline ranking's Hits@1 and MRR (KG1→KG2, test pairs
against every unlabelled entity) and the time of each phase as ``mimea train --json`` reports
it.

    python -m bench.train_end_to_end --work /work/scale --entities 2000 110000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.scale_results import measured_run, save_rows

ROOT = Path(__file__).resolve().parents[1]

MIMEA = [sys.executable, "-m", "mimea_cli"]


def demo_data(work: Path, entities: int) -> Path:
    """The synthetic pair of ``entities`` entities in total, generated once."""
    data = work / f"d{entities}"
    if not (data / "ill_ent_ids").is_file():
        subprocess.run([*MIMEA, "demo-data", "--out", str(data), "--entities", str(entities)],
                       check=True, cwd=ROOT)
    return data


def train_row(data: Path, out: Path, config: Path, threads: int,
              overrides: list[str]) -> dict[str, Any]:
    """Train on ``data`` into ``out`` and return the run's scale.json row."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    command = [*MIMEA, "train", "--data", str(data), "--out", str(out), "--config", str(config),
               "--json", "--quiet"]
    for item in overrides:
        command += ["--set", item]
    wall_s, peak_mb, stdout = measured_run(command)
    report = json.loads(stdout)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    synthetic = json.loads((data / "synthetic.json").read_text(encoding="utf-8"))
    headline = report["rankings"][report["headline"]]["kg1_to_kg2"]
    return {"task": "train-end-to-end", "dataset": "synthetic",
            "entities_per_kg": synthetic["summary"]["kg1_entities"], "processes": 1,
            "threads": threads,
            "epochs": report["epochs"], "best_epoch": report["best_epoch"],
            "s_per_epoch": round(metrics["s_per_epoch"], 1), "wall_s": round(wall_s, 1),
            "peak_rss_mb": round(peak_mb), "ranking": report["headline"],
            "hits1": round(headline["hits1"], 4), "mrr": round(headline["mrr"], 4),
            "served_hits1": round(report["all_targets"]["kg1_to_kg2"]["hits1"], 4),
            "pairs": report["pairs"], "seconds": report["seconds"],
            "command": " ".join(["mimea", *command[3:]]).replace(str(ROOT) + "/", ""),
            "overrides": overrides}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for the generated data and the checkpoints")
    parser.add_argument("--entities", type=int, nargs="+", default=[2000, 110000],
                        help="sizes to run (mimea demo-data --entities)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "dbp15k.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override passed on to mimea train")
    args = parser.parse_args()
    for entities in args.entities:
        data = demo_data(args.work, entities)
        row = train_row(data, args.work / f"ckpt{entities}", args.config, args.threads,
                        args.overrides)
        print(json.dumps(row), flush=True)
        save_rows([row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
