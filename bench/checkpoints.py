"""The checkpoint the serving bench loads: given, the trained zh_en one, or a synthetic one."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the bench process loads torch only when it builds a synthetic checkpoint
    import torch

    from mimea.model.checkpoint import EmbeddingTables

ROOT = Path(__file__).resolve().parents[1]
ZH_EN_DATA = ROOT.parent / "shared" / "data" / "dbp15k" / "zh_en"
# Where `python -m bench.accuracy --only zh_en --keep-checkpoints checkpoints` writes it.
ZH_EN_CHECKPOINT = ROOT / "checkpoints" / "dbp15k_zh_en_iterative"
ZH_EN_SIZES = (19_388, 19_572)


def noisy_copy_embeddings(n1: int, n2: int, n_gold: int, dims: Mapping[str, int], *,
                          noise: float, missing: Mapping[str, float],
                          gen: torch.Generator) -> tuple[torch.Tensor, EmbeddingTables]:
    """Embedding tables where KG2 row ``j < n_gold`` is a noisy copy of KG1 row ``perm[j]``.

    ``missing`` gives the share of entities without a modality (masked, zero rows). The joint
    embedding is the concatenation of the weighted, normalised modal embeddings (as the model
    builds it), so candidates and align answers are meaningful, not random. Returns ``perm``
    (the gold alignment) and the tables.
    """
    import torch
    import torch.nn.functional as F

    from mimea.model.checkpoint import EmbeddingTables

    modalities = list(dims)
    perm = torch.randperm(n1, generator=gen)[:n_gold]
    n = n1 + n2
    mask = torch.ones(n, len(modalities), dtype=torch.bool)
    for i, m in enumerate(modalities):
        if missing.get(m, 0.0) > 0:
            mask[:, i] = torch.rand(n, generator=gen) > missing[m]
    mods: dict[str, torch.Tensor] = {}
    for i, m in enumerate(modalities):
        kg1 = torch.randn(n1, dims[m], generator=gen)
        kg2 = torch.randn(n2, dims[m], generator=gen)
        kg2[:n_gold] = kg1[perm] + noise * torch.randn(n_gold, dims[m], generator=gen)
        mods[m] = torch.cat([kg1, kg2])
        mods[m][~mask[:, i]] = 0.0
    raw = torch.rand(n, len(modalities), generator=gen) + 0.2
    weights = torch.where(mask, raw, torch.zeros_like(raw))
    weights = weights / weights.sum(1, keepdim=True)
    joint = torch.cat([weights[:, i:i + 1] * F.normalize(mods[m], dim=1)
                       for i, m in enumerate(modalities)], dim=1)
    return perm, EmbeddingTables(joint=joint, modalities=mods, fusion_weights=weights, mask=mask)


def build_synthetic(path: Path, n1: int, n2: int, *, dim: int = 300, seed: int = 0) -> Path:
    """A zh_en-sized checkpoint: 3 modalities x ``dim``; KG2 rows are noisy copies of KG1
    partners, and a fifth of the entities have no image."""
    import torch

    from mimea.model.checkpoint import EntityTable, write_checkpoint

    gen = torch.Generator().manual_seed(seed)
    n_gold = min(n1, n2, max(1, int(0.77 * min(n1, n2))))  # DBP15K: 15,000 of ~19,500
    perm, tables = noisy_copy_embeddings(
        n1, n2, n_gold, {"structure": dim, "attribute": dim, "visual": dim}, noise=0.6,
        missing={"visual": 0.2}, gen=gen)
    n = n1 + n2
    uris = ([f"http://zh.dbpedia.org/resource/实体_{i}" for i in range(n1)]
            + [f"http://dbpedia.org/resource/Entity_{j}" for j in range(n2)])
    pairs = [[int(perm[j]), n1 + j] for j in range(n_gold)]
    write_checkpoint(
        path,
        config={"modalities": list(tables.modalities), "model": {"synthetic": True},
                "data": {"name": f"synthetic-{n1}x{n2}", "kg1": "KG1", "kg2": "KG2"}},
        weights={"encoder.weight": torch.zeros(1, 1)},
        embeddings=tables,
        entities=EntityTable(ids=list(range(n)), kgs=[1] * n1 + [2] * n2, uris=uris),
        split={"train_ratio": 0.3, "seed": seed, "train": pairs[: n_gold // 3], "valid": [],
               "test": pairs[n_gold // 3:]},
        metrics={"synthetic": True},
    )
    return path


def choose_checkpoint(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """``--checkpoint``, else the trained zh_en checkpoint, else a synthetic one of its size."""
    if args.checkpoint is not None:
        return args.checkpoint, f"given: {args.checkpoint}"
    if ZH_EN_DATA.is_dir() and (ZH_EN_CHECKPOINT / "config.json").is_file():
        return ZH_EN_CHECKPOINT, f"trained DBP15K zh_en: {ZH_EN_CHECKPOINT}"
    n1, n2 = (300, 320) if args.tiny else ZH_EN_SIZES
    path = build_synthetic(tmp / "synthetic", n1, n2)
    return path, (f"synthetic {n1} + {n2} entities, 3 modalities x 300-d, joint 900-d "
                  f"(no trained zh_en checkpoint at {ZH_EN_CHECKPOINT})")
