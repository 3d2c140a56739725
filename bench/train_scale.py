"""Training at scale: seconds per epoch, peak memory and a quick accuracy check on synthetic
KG pairs of growing size.

Each pair (``mimea demo-data --entities N --out DIR``) trains for a few epochs in a process of
its own (so that its peak RSS is its own), or in ``--processes`` of them, data-parallel. The
epochs between the first (which also builds the model and propagates the seed labels) and the
last (which also validates) give ``s_per_epoch``; ``steps_rss_mb`` is the peak before that
validation, ``peak_rss_mb`` the whole run's (summed over processes). Hits@1 and MRR rank a
sample of test pairs, KG1→KG2 by cosine, against every unlabelled KG2 entity: a check that
training learned, not a benchmark of accuracy (a few epochs). Rows go to
``bench/results/scale.json`` (rows of the same task, dataset, size and process count
replaced); ``bench/results/train_scale.png`` plots seconds per epoch against entities per KG.

    python -m bench.train_scale /work/scale/d10k /work/scale/d40k /work/scale/d110k
    python -m bench.train_scale --processes 2 --threads 1 /work/scale/d10k
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mimea.model.config import MIMEAConfig, load_config
from mimea.training.memory import peak_rss_mb
from mimea.training.pipeline import prepare, unlabelled_rows
from mimea.training.trainer import SINGLE_PROCESS, Shard, TrainResult, infer, train_model

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results" / "scale.json"
PLOT = ROOT / "bench" / "results" / "train_scale.png"
RANKED_PAIRS = 2000
CHUNK = 256


def epoch_times(start: float, marks: list[float]) -> dict[str, float]:
    """Seconds per plain epoch, and the extra seconds of the first (setup) and the last
    (validation), from the start time and each epoch's end."""
    durations = [b - a for a, b in itertools.pairwise([start, *marks])]
    plain = durations[1:-1] or durations
    per_epoch = sum(plain) / len(plain)
    return {"s_per_epoch": per_epoch, "setup_s": durations[0] - per_epoch,
            "validation_s": durations[-1] - per_epoch}


def sampled_ranking(joint: torch.Tensor, test: torch.Tensor, targets: torch.Tensor,
                    sample: int) -> dict[str, float]:
    """Cosine Hits@1 and MRR, KG1→KG2, of ``sample`` test pairs against ``targets`` (every
    unlabelled KG2 row, the test's targets among them), in chunks of rows; ties count
    against the gold."""
    picked = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:sample]]
    column = {int(row): i for i, row in enumerate(targets)}
    gold = torch.tensor([column[int(t)] for t in picked[:, 1]])
    pool = F.normalize(joint[targets], dim=-1)
    ranks = []
    for lo in range(0, len(picked), CHUNK):
        scores = F.normalize(joint[picked[lo:lo + CHUNK, 0]], dim=-1) @ pool.T
        own = scores.gather(1, gold[lo:lo + CHUNK, None])
        ranks.append((scores >= own).sum(1).float())
    rank = torch.cat(ranks)
    return {"hits1": float((rank == 1).float().mean()), "mrr": float((1 / rank).mean())}


def measure(data: Path, config: MIMEAConfig, shard: Shard) -> dict[str, Any]:
    """Train on ``data`` for ``config.training.epochs`` and return this process's figures."""
    start = time.perf_counter()
    prepared = prepare(data, config)
    prepare_s, prepare_rss = time.perf_counter() - start, peak_rss_mb()
    unlabelled = unlabelled_rows(prepared.data, prepared.split)
    marks: list[float] = []
    steps_rss: list[float] = []  # peak after each epoch; the last one's includes validation

    def on_epoch(_: dict[str, float]) -> None:
        marks.append(time.perf_counter())
        steps_rss.append(peak_rss_mb())

    train_start = time.perf_counter()
    result = train_model(config, prepared.inputs, torch.as_tensor(prepared.split.train),
                         torch.as_tensor(prepared.split.valid), device=torch.device("cpu"),
                         candidate_rows=unlabelled, progress=False, on_epoch=on_epoch,
                         shard=shard)
    figures = {"train_s": time.perf_counter() - train_start,
               **epoch_times(train_start, marks), "prepare_s": prepare_s,
               "prepare_rss_mb": prepare_rss, "steps_rss_mb": steps_rss[-2],
               "train_pairs": len(prepared.split.train),
               "entities_per_kg": prepared.data.num_kg1}
    if shard.rank == 0:
        figures.update(_accuracy(result, prepared.inputs, prepared.split.test, unlabelled[1]))
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def _accuracy(result: TrainResult, inputs: Any, test: Any,
              targets: torch.Tensor) -> dict[str, float]:
    joint = result.joint(infer(result.model, inputs).joint)
    return sampled_ranking(joint, torch.as_tensor(test), targets, RANKED_PAIRS)


def worker(args: argparse.Namespace) -> None:
    """One process of a measurement; rank 0 prints the row as JSON."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `mimea train` does
    config = load_config(None, ["training.device=cpu", f"training.epochs={args.epochs}",
                                f"training.valid_every={args.epochs}",
                                f"training.steps_per_epoch={args.steps_per_epoch}",
                                *args.set])
    shard = SINGLE_PROCESS
    if args.processes > 1:
        dist.init_process_group("gloo")
        shard = Shard(rank=dist.get_rank(), size=dist.get_world_size())
    figures = measure(args.worker, config, shard)
    peaks = [figures["peak_rss_mb"]]
    if shard.size > 1:
        peaks = [0.0] * shard.size
        dist.all_gather_object(peaks, figures["peak_rss_mb"])
        dist.destroy_process_group()
    if shard.rank == 0:
        print(json.dumps(_row(args, config, figures, sum(peaks))), flush=True)


def _row(args: argparse.Namespace, config: MIMEAConfig, figures: dict[str, Any],
         peak_rss: float) -> dict[str, Any]:
    return {"task": "train", "dataset": "synthetic",
            "entities_per_kg": figures["entities_per_kg"], "processes": args.processes,
            "threads": args.threads, "epochs": config.training.epochs,
            "s_per_epoch": round(figures["s_per_epoch"], 1),
            "wall_s": round(figures["prepare_s"] + figures["train_s"], 1),
            "peak_rss_mb": round(peak_rss), "hits1": round(figures["hits1"], 4),
            "mrr": round(figures["mrr"], 4), "ranking": "cosine", "ranked_pairs": RANKED_PAIRS,
            "steps_per_epoch": config.training.steps_per_epoch,
            "batch_size": config.training.batch_size, "train_pairs": figures["train_pairs"],
            "setup_s": round(figures["setup_s"], 1),
            "validation_s": round(figures["validation_s"], 1),
            "prepare_s": round(figures["prepare_s"], 1),
            "prepare_rss_mb": round(figures["prepare_rss_mb"]),
            "steps_rss_mb": round(figures["steps_rss_mb"]),
            "data": str(args.worker)}


def run_one(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure ``data`` in fresh processes and return the row rank 0 printed."""
    own = ["-m", "bench.train_scale", "--worker", str(data), "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--processes", str(args.processes),
           "--steps-per-epoch", str(args.steps_per_epoch)]
    for item in args.set:
        own += ["--set", item]
    launcher = [sys.executable]
    if args.processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={args.processes}"]
    # ``-m bench.train_scale`` (torchrun passes ``-m`` on to each worker) finds the checkout
    # through PYTHONPATH, wherever the command was run from.
    done = subprocess.run([*launcher, *own], check=True, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_row(row: dict[str, Any]) -> None:
    """Merge ``row`` into the shared results file, replacing the row of the same task,
    dataset, size and process count (rows of other benchmarks have no process count)."""
    def key(r: dict[str, Any]) -> tuple[str, str, int, int]:
        return r["task"], r["dataset"], r["entities_per_kg"], r.get("processes", 1)

    results = (json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file()
               else {"rows": []})
    results["rows"] = [r for r in results["rows"] if key(r) != key(row)] + [row]
    results["rows"].sort(key=key)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def plot() -> None:
    """Seconds per epoch against entities per KG, one line per process count."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[dev]'): no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in json.loads(RESULTS.read_text(encoding="utf-8"))["rows"]
            if r["task"] == "train" and r["dataset"] == "synthetic"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind in sorted({(r["processes"], r["threads"]) for r in rows}):
        line = sorted((r["entities_per_kg"], r["s_per_epoch"]) for r in rows
                      if (r["processes"], r["threads"]) == kind)
        axes.plot(*zip(*line, strict=True), marker="o",
                  label=f"{kind[0]} process(es) × {kind[1]} thread(s)")
    axes.set_xlabel("entities per KG")
    axes.set_ylabel("seconds per epoch")
    axes.set_title("MIMEA training on CPU: one epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", type=Path, help="synthetic KG pair folders")
    parser.add_argument("--epochs", type=int, default=4, help="at least 3: setup, plain, "
                        "validation")
    parser.add_argument("--threads", type=int, default=2, help="threads per process")
    parser.add_argument("--processes", type=int, default=1, help="data-parallel processes")
    parser.add_argument("--steps-per-epoch", type=int, default=4,
                        help="training.steps_per_epoch (0: a step per batch)")
    parser.add_argument("--set", action="append", default=[], help="config override")
    parser.add_argument("--no-save", action="store_true", help="print the rows only")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args)
        return 0
    for data in args.data:
        row = run_one(data, args)
        print(json.dumps(row), flush=True)
        if not args.no_save:
            save_row(row)
            plot()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
