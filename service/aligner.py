"""A loaded checkpoint ready to answer candidate and alignment queries.

Three parts, each with one job: ``service.directory`` (which row an identifier names),
``service.scoring`` (tables, indexes, rankings, ranks and scores) and ``service.responses``
(the answers). The batch methods are synchronous and run off the event loop
(``service.batcher``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimea.model.checkpoint import Checkpoint, load_checkpoint
from mimea.model.device import resolve_device
from mimea.model.ranking import Ranking
from mimea.service.alignment import PairEvidence, ServedAlignment, propagated_cosine
from mimea.service.directory import KGS, EntityDirectory
from mimea.service.errors import StartupError
from mimea.service.index import set_threads
from mimea.service.responses import align_answers, alignment_answers, candidates_answers
from mimea.service.scoring import ScoredPairs, Scorer
from mimea.service.settings import Settings

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
        # The version directory read: the checkpoint's path may be switched to a newer one.
        self.checkpoint_dir: Path = checkpoint.path.resolve()
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
        self.alignment = ServedAlignment.of(checkpoint)

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
                scored = self.scorer.score_pairs(sources, targets, cosine)
                built = align_answers(self.directory, self.modalities, self.scorer.mask,
                                      self.scorer.weights, self.rankings.default, scored,
                                      target_rank, source_rank, self._match_probability(scored))
                for i, answer in zip(chunk, built, strict=True):
                    answers[i] = answer
        return answers

    def _match_probability(self, pairs: ScoredPairs) -> np.ndarray | None:
        """The calibrated match probability of scored pairs (``service.alignment``); None
        without stored decisions or a plan."""
        if self.alignment is None:
            return None
        shares = self.rankings.plan_shares(pairs.source, pairs.target, pairs.cosine)
        if shares is None:
            return None
        first = self.directory.kgs[pairs.source] == 1
        agreement = {m: np.where(pairs.present[:, i], pairs.modality[:, i], np.nan)
                     for i, m in enumerate(self.modalities)}
        agreement.update(propagated_cosine(self.scorer.joint_rows(pairs.source),
                                           self.scorer.joint_rows(pairs.target),
                                           self.alignment.propagated_width))
        evidence = PairEvidence(kg1_share=np.where(first, shares[0], shares[1]),
                                kg2_share=np.where(first, shares[1], shares[0]),
                                agreement=agreement)
        return self.alignment.pair_probability(pairs.source, pairs.target, evidence)

    def alignment_batch(self, queries: Sequence[tuple[int, float | None]]
                        ) -> list[dict[str, Any]]:
        """Each (row, threshold)'s decision, with its per-modality agreement with the entity
        it was compared with (its counterpart, else its best candidate)."""
        assert self.alignment is not None
        rows = [self.alignment.decision(row, threshold) for row, threshold in queries]
        compared = np.array([r.counterpart if r.counterpart is not None else
                             -1 if r.runner_up is None else r.runner_up for r in rows],
                            dtype=np.int64)
        has = compared >= 0
        sources = np.array([row for row, _ in queries], dtype=np.int64)
        modality, present = self.scorer.modality_cosines(sources[has], compared[has])
        thresholds = [self.alignment.threshold_for(t) for _, t in queries]
        return alignment_answers(self.directory, self.modalities, rows, thresholds, compared,
                                 modality, present)

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports."""
        indexes = self.scorer.indexes
        plan = self.rankings.plan
        alignment = self.alignment
        return {"model_version": self.model_version, "modalities": self.modalities,
                "embedding_dims": self.embedding_dims,
                "entities": {"kg1": self.directory.sizes[1], "kg2": self.directory.sizes[2]},
                "metrics": self.metrics, "index": self.settings.index,
                "device": str(self.device), "csls_k": self.rankings.csls_k,
                "index_on_gpu": any(i.on_gpu for i in indexes.values()),
                "search_precision": indexes[1].precision,
                "default_metric": self.rankings.default,
                "available_metrics": list(self.rankings.available),
                "sinkhorn_reg": plan.reg if plan is not None else None,
                "decision_threshold": alignment.threshold if alignment else None,
                "decision_precision": (alignment.decisions.target_precision
                                       if alignment and math.isfinite(
                                           alignment.decisions.target_precision) else None)}
