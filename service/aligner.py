"""A loaded checkpoint ready to answer candidate and alignment queries.

Three parts, each with one job: ``service.directory`` (which row an identifier names),
``service.scoring`` (tables, indexes, rankings, ranks and scores) and ``service.responses``
(the answers). The batch methods are synchronous and run off the event loop
(``service.batcher``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.checkpoint import Checkpoint, load_checkpoint
from model.device import resolve_device
from model.ranking import Ranking
from service.directory import KGS, EntityDirectory
from service.errors import StartupError
from service.index import set_threads
from service.responses import align_answers, candidates_answers
from service.scoring import Scorer
from service.settings import Settings

logger = logging.getLogger(__name__)

ALIGN_BLOCK = 256  # pairs scored against both whole KGs at once


class Aligner:
    """A checkpoint's directory and scoring core, answering batches of queries."""

    def __init__(self, checkpoint: Checkpoint, settings: Settings) -> None:
        self.settings = settings
        try:
            self.device = resolve_device(settings.device)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        self.model_version = checkpoint.model_version
        self.modalities = checkpoint.modalities
        self.metrics = checkpoint.metrics
        emb = checkpoint.embeddings
        self.embedding_dims = {"joint": int(emb.joint.shape[1]),
                               **{m: int(t.shape[1]) for m, t in emb.modalities.items()}}
        # Loading is batched (BLAS-bound) and runs alone: use every core for it.
        set_threads(max(settings.threads, os.cpu_count() or 1))
        self.directory = EntityDirectory(checkpoint.entities)
        self.scorer = Scorer(checkpoint, self.directory, settings, self.device)
        self.rankings = self.scorer.rankings

    @classmethod
    def load(cls, settings: Settings) -> Aligner:
        """Load and validate ``settings.checkpoint``; raise CheckpointError/StartupError."""
        if settings.checkpoint is None:
            raise StartupError("no checkpoint: set MIMEA_CHECKPOINT or pass --checkpoint")
        start = time.perf_counter()
        aligner = cls(load_checkpoint(settings.checkpoint), settings)
        sizes = aligner.directory.sizes
        logger.info("loaded checkpoint %s (model %s, %d + %d entities, %s index, %s, rankings "
                    "%s, default %s) in %.2fs", settings.checkpoint, aligner.model_version,
                    sizes[1], sizes[2], settings.index, aligner.device,
                    ", ".join(aligner.rankings.available), aligner.rankings.default,
                    time.perf_counter() - start)
        return aligner

    def close(self) -> None:
        self.scorer.close()

    def candidates_batch(self, queries: Sequence[tuple[int, int, Ranking]]
                         ) -> list[dict[str, Any]]:
        """Top-k of the other KG for each (row, k, ranking): one search per source KG and
        ranking."""
        answers: list[dict[str, Any]] = [{}] * len(queries)
        groups: dict[tuple[int, Ranking], list[int]] = {}
        for i, (row, _, ranking) in enumerate(queries):
            groups.setdefault((int(self.directory.kgs[row]), ranking), []).append(i)
        for (kg, ranking), picked in groups.items():
            sources = np.array([queries[i][0] for i in picked], dtype=np.int64)
            ks = [queries[i][1] for i in picked]
            cosine, targets = self.scorer.top_k(kg, sources, max(ks), ranking)
            kept = [targets[j, :k] >= 0 for j, k in enumerate(ks)]
            counts = [int(found.sum()) for found in kept]
            pairs = self.scorer.score_pairs(
                np.repeat(sources, counts),
                np.concatenate([targets[j, :len(f)][f] for j, f in enumerate(kept)]),
                np.concatenate([cosine[j, :len(f)][f] for j, f in enumerate(kept)]))
            built = candidates_answers(self.directory, self.modalities, ranking,
                                       sources.tolist(), ks, counts, pairs)
            for i, answer in zip(picked, built, strict=True):
                answers[i] = answer
        return answers

    def align_batch(self, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Scores, exact ranks both ways under every ranking, mutual nearest neighbours and
        plan probability for (source, target) rows."""
        answers: list[dict[str, Any]] = [{}] * len(pairs)
        for kg in KGS:
            picked = [i for i, (s, _) in enumerate(pairs) if self.directory.kgs[s] == kg]
            for lo in range(0, len(picked), ALIGN_BLOCK):
                chunk = picked[lo:lo + ALIGN_BLOCK]
                sources = np.array([pairs[i][0] for i in chunk], dtype=np.int64)
                targets = np.array([pairs[i][1] for i in chunk], dtype=np.int64)
                cosine, target_rank, source_rank = self.scorer.ranks(kg, sources, targets)
                built = align_answers(self.directory, self.modalities, self.scorer.mask,
                                      self.scorer.weights, self.rankings.default,
                                      self.scorer.score_pairs(sources, targets, cosine),
                                      target_rank, source_rank)
                for i, answer in zip(chunk, built, strict=True):
                    answers[i] = answer
        return answers

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports."""
        indexes = self.scorer.indexes
        plan = self.rankings.plan
        return {"model_version": self.model_version, "modalities": self.modalities,
                "embedding_dims": self.embedding_dims,
                "entities": {"kg1": self.directory.sizes[1], "kg2": self.directory.sizes[2]},
                "metrics": self.metrics, "index": self.settings.index,
                "device": str(self.device), "csls_k": self.rankings.csls_k,
                "index_on_gpu": any(i.on_gpu for i in indexes.values()),
                "search_precision": indexes[1].precision,
                "default_metric": self.rankings.default,
                "available_metrics": list(self.rankings.available),
                "sinkhorn_reg": plan.reg if plan is not None else None}
