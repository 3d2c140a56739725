"""Evaluation at scale: ``mimea evaluate`` on a checkpoint the size of a real KG pair.

The checkpoint holds the entities, gold split and structure of a ``mimea demo-data`` pair
(``--data``) with planted joint embeddings: KG2's gold partner of a KG1 entity is a noisy copy
of its vector, every other entity a vector of its own, clustered so that neighbours are close
rivals. Training at this size is measured by ``bench/train_scale.py``; this one measures what
follows it: the ranking terms a checkpoint stores for the service (the "decode" row: candidate
search over every entity and the sparse plan) and ``mimea evaluate`` (the "evaluate" row: every
ranking of the test pairs and the served ranking among every entity), each in its own process
so its peak RSS is its own. Rows go to ``bench/results/scale.json``.

    mimea demo-data --out /tmp/d110k --entities 110000
    python -m bench.scale_eval --data /tmp/d110k --work /tmp/scale_eval
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.scale_results import measured_run, save_rows
from mimea.model.checkpoint import (
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)
from mimea.model.config import MIMEAConfig
from mimea.training.data import load_kg_pair
from mimea.training.split import split_pairs


def planted_checkpoint(data_dir: Path, out: Path, *, dim: int, noise: float,
                       seed: int) -> dict[str, Any]:
    """Write a checkpoint of ``data_dir``'s entities and split with planted embeddings."""
    data = load_kg_pair(data_dir)
    config = MIMEAConfig()
    split = split_pairs(data.gold, train_ratio=config.data.train_ratio,
                        valid_fraction=config.data.valid_fraction, seed=config.training.seed)
    gen = torch.Generator().manual_seed(seed)
    n = data.num_entities
    centres = torch.randn(max(1, n // 50), dim, generator=gen)
    joint = centres[torch.randint(len(centres), (n,), generator=gen)] \
        + 0.7 * torch.randn(n, dim, generator=gen)
    gold = torch.as_tensor(data.gold)
    joint[gold[:, 1]] = joint[gold[:, 0]] + noise * torch.randn(len(gold), dim, generator=gen)
    joint = torch.nn.functional.normalize(joint, dim=1)
    mask = torch.ones(n, 1, dtype=torch.bool)
    ids = data.ids

    def as_ids(rows: np.ndarray) -> list[list[int]]:
        return ids[rows].tolist()

    write_checkpoint(
        out,
        config={"config": config.model_dump(mode="json"), "modalities": ["structure"],
                "data": {"path": str(data_dir), **data.summary(), "planted": True}},
        weights={"planted": torch.zeros(1)},
        embeddings=EmbeddingTables(joint=joint, modalities={"structure": joint[:, :8]},
                                   fusion_weights=torch.ones(n, 1), mask=mask),
        entities=EntityTable(ids=ids.tolist(), kgs=data.kgs.astype(int).tolist(),
                             uris=list(data.uris)),
        split={"train_ratio": config.data.train_ratio, "seed": config.training.seed,
               "train": as_ids(split.train), "valid": as_ids(split.valid),
               "test": as_ids(split.test)},
        metrics={"planted": True})
    return {"entities_per_kg": max(data.num_kg1, data.num_kg2), "dim": dim, "noise": noise,
            "test_pairs": len(split.test)}


def add_terms(checkpoint: Path) -> None:
    """Rewrite ``checkpoint`` with the ranking terms the service needs (timed by the caller)."""
    from mimea.training.pipeline import stored_ranking_terms

    ckpt = load_checkpoint(checkpoint, with_weights=True)
    config = MIMEAConfig.model_validate(ckpt.config["config"])
    r, potential = stored_ranking_terms(ckpt.embeddings.joint, torch.as_tensor(ckpt.entities.kgs),
                                        config.eval)
    emb = ckpt.embeddings
    write_checkpoint(
        checkpoint,
        config={k: v for k, v in ckpt.config.items()
                if k not in ("format_version", "model_version", "embedding_dims", "files")},
        weights=ckpt.weights,
        embeddings=EmbeddingTables(joint=emb.joint, modalities=emb.modalities,
                                   fusion_weights=emb.fusion_weights, mask=emb.mask,
                                   csls_r=r, sinkhorn_potential=potential),
        entities=ckpt.entities, split=ckpt.split, metrics=ckpt.metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a mimea demo-data folder")
    parser.add_argument("--work", type=Path, required=True, help="where the checkpoint goes")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--noise", type=float, default=0.9)
    parser.add_argument("--step", choices=["all", "terms"], default="all")
    args = parser.parse_args()
    checkpoint = args.work / "checkpoint"
    if args.step == "terms":
        add_terms(checkpoint)
        return
    threads = torch.get_num_threads()
    shape = planted_checkpoint(args.data, checkpoint, dim=args.dim, noise=args.noise, seed=0)
    dataset = f"synthetic-planted-{args.data.name}"
    base = {"dataset": dataset, **shape, "threads": threads}
    wall, rss, _ = measured_run([sys.executable, "-m", "bench.scale_eval", "--data",
                                 str(args.data), "--work", str(args.work), "--step", "terms"])
    rows = [{"task": "decode", **base, "wall_s": round(wall, 1), "peak_rss_mb": round(rss)}]
    wall, rss, out = measured_run([sys.executable, "-m", "mimea_cli", "evaluate", "--checkpoint",
                            str(checkpoint), "--json"])
    report = json.loads(out)
    served, sinkhorn = report["all_targets"]["kg1_to_kg2"], \
        report["rankings"]["sinkhorn"]["kg1_to_kg2"]
    rows.append({"task": "evaluate", **base, "wall_s": round(wall, 1), "peak_rss_mb": round(rss),
                 "hits1": sinkhorn["hits1"], "mrr": sinkhorn["mrr"],
                 "csls_hits1": report["rankings"]["csls"]["kg1_to_kg2"]["hits1"],
                 "all_targets_hits1": served["hits1"], "all_targets_mrr": served["mrr"],
                 "seconds": report["seconds"]})
    save_rows(rows)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
