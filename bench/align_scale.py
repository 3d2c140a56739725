"""Deciding, writing and serving the alignment of a large KG pair: ``mimea align`` and the
service on a checkpoint of planted embeddings, up to a million entities per KG.

The pair is that of ``bench/sparse_decode.py`` (clustered unit rows; a ``--share`` of KG2 rows
are noisy copies of KG1 rows, the rest distractors with no counterpart), written as a checkpoint
whose split takes 30% of the planted pairs as seeds and 10% for validation (the calibration's),
the rest as test pairs. Each step runs in a process of its own, so that its peak RSS is its own:

- ``decode``: the ranking terms the service ranks with (candidate search both ways, sparse plan);
- ``align``: ``mimea align --store`` on the checkpoint without decisions: deciding the alignment
  (two decodes and the calibration, as ``mimea train`` does at its end), storing it, writing
  the TSV; then ``mimea align`` again from the stored decisions (``write_s``: the file alone).
  Precision and recall of the decided test sources at the default threshold come from the
  checkpoint's metrics;
- ``serve``: the service's load time and RSS, sequential latencies of ``GET /candidates`` (k 10,
  default ranking) and ``GET /alignment/{entity}``, and Hits@1 of test sources through
  ``/candidates`` (k 1) against every KG2 entity.

Rows go to ``bench/results/scale.json`` (dataset ``planted-d<dim>``).

    python -m bench.align_scale --entities 100000 --work /tmp/align_100k
    nohup python -m bench.align_scale --entities 1000000 --work /tmp/align_1m > /tmp/a1m.log &
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import torch

from bench.scale_results import measured_run, save_rows
from bench.server_process import Server
from bench.sparse_decode import planted
from mimea.model.checkpoint import EmbeddingTables, EntityTable, write_checkpoint
from mimea.model.config import MIMEAConfig

ROOT = Path(__file__).resolve().parents[1]

MIMEA = ROOT / ".venv" / "bin" / "mimea"
QUERIES = 300  # sequential requests per latency figure
HITS_SOURCES = 1000


def uri(kg: int, row: int) -> str:
    return f"http://kg{kg}.example.org/resource/Entity_{row:07d}"


def write_planted(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The planted pair as a checkpoint without ranking terms or decisions."""
    n = args.entities
    x1, x2, pairs = planted(n, args.dim, share=args.share, spread=0.6, noise=args.noise,
                            seed=args.seed)
    joint = torch.cat([x1, x2])
    del x1, x2
    pairs = pairs.numpy().copy()
    pairs[:, 1] += n
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    cut_train, cut_valid = int(0.3 * len(pairs)), int(0.4 * len(pairs))
    parts = {"train": order[:cut_train], "valid": order[cut_train:cut_valid],
             "test": order[cut_valid:]}
    config = MIMEAConfig.model_validate(
        {"model": {"propagation": False}, "eval": {"candidates": args.candidates}})
    write_checkpoint(
        out, config={"config": config.model_dump(mode="json"), "modalities": ["structure"],
                     "data": {"planted": True, "dim": args.dim, "noise": args.noise}},
        weights={"planted": torch.zeros(1)},
        embeddings=EmbeddingTables(joint=joint, modalities={"structure": joint},
                                   fusion_weights=torch.ones(2 * n, 1),
                                   mask=torch.ones(2 * n, 1, dtype=torch.bool)),
        entities=EntityTable(ids=list(range(2 * n)), kgs=[1] * n + [2] * n,
                             uris=[uri(1, i) for i in range(n)] + [uri(2, i) for i in range(n)]),
        split={"train_ratio": 0.3, "seed": args.seed,
               **{name: pairs[rows].tolist() for name, rows in parts.items()}},
        metrics={"planted": True})
    return {"test_pairs": len(parts["test"]), "planted_pairs": len(pairs)}


def serve_figures(checkpoint: Path, work: Path, n: int,
                  test: list[list[int]]) -> dict[str, Any]:
    """Load time, RSS, sequential latencies and Hits@1 of the service on ``checkpoint``."""
    start = time.perf_counter()
    server = Server(checkpoint, work / "server.log",
                    {"MIMEA_REDIS_URL": "", "MIMEA_THREADS": str(os.cpu_count() or 1)},
                    startup_s=3600)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    picked = [test[i] for i in rng.choice(len(test), size=min(HITS_SOURCES, len(test)),
                                          replace=False)]
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            latency: dict[str, list[float]] = {"candidates": [], "alignment": []}
            for source, _ in picked[:QUERIES]:
                for route, path in (("candidates", f"/candidates/{quote(uri(1, source))}"),
                                    ("alignment", f"/alignment/{quote(uri(1, source))}")):
                    t = time.perf_counter()
                    http.get(path, params={"k": 10} if route == "candidates" else None
                             ).raise_for_status()
                    latency[route].append(1000 * (time.perf_counter() - t))
            hits = 0
            for lo in range(0, len(picked), 200):
                chunk = picked[lo:lo + 200]
                body = http.post("/candidates:batch", json={
                    "entities": [uri(1, s) for s, _ in chunk], "k": 1}).json()
                hits += sum(item["candidates"][0]["entity"] == uri(2, t - n)
                            for item, (_, t) in zip(body["results"], chunk, strict=True))
            metric = http.get("/model").json()["default_metric"]
        rss = server.rss_mb()
    finally:
        server.stop()
    return {"load_s": round(load_s, 1), "rss_mb": round(rss), "metric": metric,
            "hits1": round(hits / len(picked), 4), "ranked_sources": len(picked),
            **{f"{route}_p50_ms": round(statistics.median(ms), 2)
               for route, ms in latency.items()},
            **{f"{route}_p99_ms": round(float(np.percentile(ms, 99)), 2)
               for route, ms in latency.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000, help="entities per KG")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--share", type=float, default=0.8, help="KG2 rows with a partner")
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / "ckpt"
    base = {"dataset": f"planted-d{args.dim}", "entities_per_kg": args.entities,
            "dim": args.dim, "noise": args.noise, "candidates": args.candidates,
            "threads": torch.get_num_threads()}
    start = time.perf_counter()
    base.update(write_planted(checkpoint, args))
    print(f"checkpoint written in {time.perf_counter() - start:.0f} s", flush=True)

    decode_s, decode_mb, _ = measured_run([sys.executable, "-c",
                                    "import sys; from pathlib import Path; "
                                    "from bench.scale_eval import add_terms; "
                                    "add_terms(Path(sys.argv[1]))", str(checkpoint)])
    print(f"decode: {decode_s:.0f} s, {decode_mb:.0f} MB", flush=True)
    out = args.work / "alignment.tsv"
    align_s, align_mb, _ = measured_run([str(MIMEA), "align", "--checkpoint", str(checkpoint),
                                  "--out", str(out), "--store"])
    print(f"decide + store + write: {align_s:.0f} s, {align_mb:.0f} MB", flush=True)
    write_s, write_mb, _ = measured_run([str(MIMEA), "align", "--checkpoint", str(checkpoint),
                                  "--out", str(out)])
    print(f"write: {write_s:.0f} s, {write_mb:.0f} MB", flush=True)
    metrics = json.loads((checkpoint / "metrics.json").read_text(encoding="utf-8"))
    test = metrics["decisions"]["test"]
    split = json.loads((checkpoint / "split.json").read_text(encoding="utf-8"))
    served = serve_figures(checkpoint, args.work, args.entities, split["test"])
    print(f"serve: {served}", flush=True)
    lines = sum(1 for _ in out.open(encoding="utf-8")) - 1
    save_rows([
        {"task": "decode", **base, "wall_s": round(decode_s, 1), "peak_rss_mb": round(decode_mb)},
        {"task": "align", **base, "wall_s": round(align_s, 1), "peak_rss_mb": round(align_mb),
         "write_s": round(write_s, 1), "write_peak_rss_mb": round(write_mb), "rows": lines,
         "format": "tsv", "threshold": round(test["threshold"], 4),
         "precision": round(test["precision"], 4), "recall": round(test["recall"], 4),
         "ece": round(test["ece"], 4), "f1": round(test["f1"], 4)},
        {"task": "serve", **base, "wall_s": served["load_s"], "peak_rss_mb": served["rss_mb"],
         **served}])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
