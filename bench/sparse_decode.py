"""Sparse decoding at scale: candidate search, CSLS, sparse Sinkhorn and exact ranks on
planted-alignment embeddings, without any ``[N1, N2]`` matrix.

KG1 rows are clustered unit vectors; a ``--share`` of KG2 rows are noisy copies of KG1 rows,
the rest distractors drawn and noised alike. The run searches K candidates both ways, takes
CSLS terms from them, runs the Sinkhorn plan over the candidate graph, and ranks a sample of
planted pairs against every KG2 row by CSLS and by the plan. It records wall time per phase
(data generation excluded from ``wall_s``), peak RSS and accuracy in
``bench/results/scale.json`` (rows of the same size replaced).

    python -m bench.sparse_decode --entities 100000
    nohup python -m bench.sparse_decode --entities 1000000 > /tmp/decode_1m.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bench.scale_results import save_rows
from mimea.model.similarity import (
    candidate_edges,
    csls_means,
    csls_scores,
    sparse_sinkhorn,
    streaming_gold_ranks,
    topk_candidates,
)
from mimea.training.memory import peak_rss_mb

GENERATE_BLOCK = 65_536


def planted(n: int, dim: int, *, share: float, spread: float, noise: float,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x1 [n, d], x2 [n, d], pairs [P, 2])``: unit rows, KG2 row t a noisy copy of KG1
    row s for each planted pair (s, t). Generated in blocks: peak memory is the two outputs.

    Clusters of ~50 rows make near neighbours close rivals of the planted partner, as entities
    of one type are in real KGs; ``noise`` is the norm of a copy's perturbation.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32)

    def around_centres(count: int) -> np.ndarray:
        points = centres[rng.integers(0, len(centres), count)]
        return points + spread * rng.standard_normal((count, dim), dtype=np.float32)

    x1 = _blocks(n, dim, lambda lo, hi: around_centres(hi - lo))
    matched = int(share * n)
    sources = rng.permutation(n)[:matched]
    targets = rng.permutation(n)[:matched]
    source_of = np.full(n, -1)
    source_of[targets] = sources

    def copy_or_distractor(lo: int, hi: int) -> np.ndarray:
        src = source_of[lo:hi]
        base = around_centres(hi - lo)
        base /= np.linalg.norm(base, axis=1, keepdims=True)  # a unit row, as KG1's are
        base[src >= 0] = x1[src[src >= 0]]
        step = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        return base + noise * np.sqrt(np.float32(1.0 / dim)) * step

    x2 = _blocks(n, dim, copy_or_distractor)
    pairs = np.stack([sources, targets], axis=1)
    return torch.from_numpy(x1), torch.from_numpy(x2), torch.from_numpy(pairs)


def _blocks(n: int, dim: int, make: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """``[n, dim]`` unit rows, ``make(lo, hi)`` filling rows lo..hi-1 before normalising."""
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, GENERATE_BLOCK):
        hi = min(n, lo + GENERATE_BLOCK)
        block = make(lo, hi)
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


@contextmanager
def phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` body as ``phases[name]``."""
    start = time.perf_counter()
    yield
    phases[name] = round(time.perf_counter() - start, 2)
    print(f"{name}: {phases[name]} s, peak RSS {peak_rss_mb():.0f} MB", flush=True)


def metrics(ranks: torch.Tensor) -> dict[str, float]:
    ranks = ranks.double()
    return {"hits1": float((ranks <= 1).double().mean()),
            "hits10": float((ranks <= 10).double().mean()),
            "mrr": float((1 / ranks).mean()), "mr": float(ranks.mean())}


def candidate_recall(edges: torch.Tensor, pairs: torch.Tensor, n2: int) -> float:
    """Share of planted pairs in the candidate graph (edges sorted by pair key)."""
    keys = edges[:, 0] * n2 + edges[:, 1]
    wanted = pairs[:, 0] * n2 + pairs[:, 1]
    at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
    return float((keys[at] == wanted).double().mean())


def decode(args: argparse.Namespace) -> dict[str, Any]:
    """One run at ``args.entities`` per KG; returns its ``scale.json`` row."""
    n, reg = args.entities, args.reg
    phases: dict[str, float] = {}
    with phase(phases, "generate"):
        x1, x2, pairs = planted(n, args.dim, share=args.share, spread=args.spread,
                                noise=args.noise, seed=args.seed)
    search = {"index": args.index, "nprobe": args.nprobe}
    with phase(phases, "search_12"):
        s12, ids12 = topk_candidates(x1, x2, args.k, **search)
    with phase(phases, "search_21"):
        s21, ids21 = topk_candidates(x2, x1, args.k, **search)
    with phase(phases, "candidates"):
        r1, r2 = csls_means(s12, args.csls_k), csls_means(s21, args.csls_k)
        edges, cos = candidate_edges(ids12, s12, ids21, s21, n, n)
        del s12, ids12, s21, ids21
        scores = csls_scores(cos, r1[edges[:, 0]], r2[edges[:, 1]])
        del cos
    recall = candidate_recall(edges, pairs, n)
    with phase(phases, "sinkhorn"):
        _, log_v = sparse_sinkhorn(edges, scores, n, n, reg=reg, iterations=args.iterations)
    num_edges = len(edges)
    del edges, scores
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(args.seed))
    sample = pairs[order[:args.sample]]
    queries, gold, r_q = x1[sample[:, 0]], sample[:, 1], r1[sample[:, 0]]
    with phase(phases, "rank_csls"):
        csls = metrics(streaming_gold_ranks(queries, gold, x2, scale=2.0, row_bias=-r_q,
                                            col_bias=-r2))
    with phase(phases, "rank_sinkhorn"):
        sinkhorn = metrics(streaming_gold_ranks(queries, gold, x2, scale=2 / reg,
                                                row_bias=-r_q / reg, col_bias=log_v - r2 / reg))
    return {"task": "decode", "dataset": "planted", "entities_per_kg": n,
            "wall_s": round(sum(t for name, t in phases.items() if name != "generate"), 2),
            "peak_rss_mb": round(peak_rss_mb()), "ranking": "sinkhorn",
            "hits1": sinkhorn["hits1"], "hits10": sinkhorn["hits10"], "mrr": sinkhorn["mrr"],
            "csls": csls, "candidate_recall": recall, "k": args.k, "edges": num_edges,
            "ranked_pairs": len(sample), "planted_pairs": len(pairs), "dim": args.dim,
            "index": args.index, "nprobe": args.nprobe, "csls_k": args.csls_k, "reg": reg,
            "iterations": args.iterations, "threads": torch.get_num_threads(),
            "phases_s": phases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000, help="rows per KG")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--share", type=float, default=0.8, help="share of planted KG2 rows")
    parser.add_argument("--spread", type=float, default=0.3, help="in-cluster spread")
    parser.add_argument("--noise", type=float, default=1.0, help="norm of a copy's noise")
    parser.add_argument("--k", type=int, default=50, help="candidates per entity, both ways")
    parser.add_argument("--index", choices=["auto", "flat", "ivf"], default="auto")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--csls-k", type=int, default=3)
    parser.add_argument("--reg", type=float, default=0.02)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--sample", type=int, default=10_000, help="planted pairs ranked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print the row only")
    args = parser.parse_args()
    row = decode(args)
    print(json.dumps(row), flush=True)
    if not args.no_save:
        save_rows([row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
