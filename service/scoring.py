"""The scoring core: each KG's vectors and index, the served rankings, exact ranks, and the
per-modality cosines of the breakdown.

Held once: each KG's L2-normalised joint vectors (float32 on the serving device, inside its
index; a CPU flat index adds a bfloat16 copy with the ranking columns), and each modality table
as the checkpoint stores it (float16, on the CPU) with each row's inverse norm, so the
breakdown's cosines are those of the stored values. Nothing refers to the loaded checkpoint's
tensors afterwards: they may map the checkpoint's file, which would then stay resident.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mimea.model.checkpoint import Checkpoint
from mimea.model.ranking import Ranking
from mimea.model.similarity import csls_means, normalise, topk_candidates
from mimea.service.directory import KGS, EntityDirectory
from mimea.service.index import KGIndex, build_index
from mimea.service.rankings import (
    Rankings,
    evaluated_csls_k,
    headline,
    plan_of,
    stored_csls_r,
)
from mimea.service.settings import Settings

SIMS_FLOATS = 1 << 22  # bounds the gathered modality rows (16 MB) of one similarity step


@dataclass(frozen=True)
class ScoredPairs:
    """Scores of (source, target) row pairs; every array is row-aligned with ``source``."""

    source: np.ndarray
    target: np.ndarray
    cosine: np.ndarray
    csls: np.ndarray
    sinkhorn: np.ndarray | None  # log plan share (service.rankings); None without a plan
    probability: np.ndarray | None
    modality: np.ndarray  # [P, M] cosine per modality
    present: np.ndarray  # [P, M] whether both entities have the modality


class Scorer:
    """Rankings, candidates, ranks and scores over a loaded checkpoint."""

    def __init__(self, checkpoint: Checkpoint, directory: EntityDirectory, settings: Settings,
                 device: torch.device) -> None:
        emb = checkpoint.embeddings
        self.device = device
        self.directory = directory
        self.modalities = checkpoint.modalities
        vectors = {kg: normalise(emb.joint[torch.from_numpy(directory.rows[kg])]).to(device)
                   for kg in KGS}
        csls_k = settings.csls_k or evaluated_csls_k(checkpoint.config)
        r = stored_csls_r(checkpoint.config, emb, csls_k)
        self.rankings = Rankings(
            csls_k=csls_k, r=r if r is not None else self._nearest_means(vectors, csls_k),
            plan=plan_of(checkpoint.config, emb), headline=headline(checkpoint.config),
            kg_sizes=np.where(directory.kgs == 1, directory.sizes[1], directory.sizes[2]))
        self.indexes: dict[int, KGIndex] = {
            kg: build_index(vectors.pop(kg),
                            self.rankings.key_biases(torch.from_numpy(directory.rows[kg])),
                            kind=settings.index, precision=settings.search_precision,
                            use_gpu=device.type == "cuda", hnsw_m=settings.hnsw_m,
                            hnsw_ef_search=settings.hnsw_ef_search,
                            ivf_nlist=settings.ivf_nlist, ivf_nprobe=settings.ivf_nprobe)
            for kg in KGS}
        self.tables = {m: _as_stored(emb.modalities[m]).numpy() for m in self.modalities}
        self.inverse_norms = {m: (1 / emb.modalities[m].norm(dim=1).clamp_min(1e-12)).numpy()
                              for m in self.modalities}
        self.mask = emb.mask.numpy().copy()
        self.weights = emb.fusion_weights.numpy().copy()

    def _nearest_means(self, vectors: dict[int, torch.Tensor], k: int) -> torch.Tensor:
        """CSLS r of every row: mean cosine to its ``k`` nearest entities of the other KG, by
        the evaluation's candidate search (exact up to a size, IVF beyond; for checkpoints
        that do not store r at this k)."""
        r = torch.zeros(len(self.directory))
        for kg in KGS:
            top, _ = topk_candidates(vectors[kg], vectors[3 - kg], k,
                                     use_gpu=self.device.type == "cuda")
            r[torch.from_numpy(self.directory.rows[kg])] = csls_means(top, k).cpu()
        return r

    def close(self) -> None:
        """Drop the indexes and tables (GPU memory is released with them)."""
        self.indexes.clear()
        self.tables.clear()

    def top_k(self, kg: int, sources: np.ndarray, k: int,
              ranking: Ranking) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best targets of the other KG for each source row of KG ``kg`` by
        ``ranking``: ``(cosine [Q, k], target rows [Q, k])``, best first; an approximate index
        may leave some target rows -1."""
        other = 3 - kg
        queries = self.indexes[kg].rows(self.directory.local[sources])
        cosine, ids = self.indexes[other].search(queries, k, self.rankings.column(ranking))
        found = ids.numpy()
        rows = np.where(found >= 0, self.directory.rows[other][found.clip(min=0)], -1)
        return cosine.numpy(), rows

    def ranks(self, kg: int, sources: np.ndarray, targets: np.ndarray
              ) -> tuple[np.ndarray, dict[Ranking, np.ndarray], dict[Ranking, np.ndarray]]:
        """For (source of KG ``kg``, target) row pairs: their cosine and, per served ranking,
        the target's rank among every entity of its KG for the source, and the source's for
        the target (1 + those scoring strictly higher)."""
        own, other = self.indexes[kg], self.indexes[3 - kg]
        s_pos, t_pos = self.directory.local[sources], self.directory.local[targets]
        forward = own.rows(s_pos) @ other.vectors.T  # the source against every target
        backward = other.rows(t_pos) @ own.vectors.T  # the target against every source
        s_loc, t_loc = (torch.from_numpy(p).to(self.device) for p in (s_pos, t_pos))
        target_rank: dict[Ranking, np.ndarray] = {}
        source_rank: dict[Ranking, np.ndarray] = {}
        for ranking in self.rankings.available:
            column = self.rankings.column(ranking)
            target_rank[ranking] = _rank(other.keyed(forward, column), t_loc)
            source_rank[ranking] = _rank(own.keyed(backward, column), s_loc)
        cosine = forward.gather(1, t_loc[:, None])[:, 0]
        return cosine.cpu().numpy(), target_rank, source_rank

    def score_pairs(self, sources: np.ndarray, targets: np.ndarray,
                    cosine: np.ndarray) -> ScoredPairs:
        """Every reported score of (source, target) row pairs whose cosines are known."""
        csls, sinkhorn, probability = self.rankings.pair_scores(sources, targets, cosine)
        modality, present = self.modality_cosines(sources, targets)
        return ScoredPairs(source=sources, target=targets, cosine=cosine, csls=csls,
                           sinkhorn=sinkhorn, probability=probability, modality=modality,
                           present=present)

    def modality_cosines(self, sources: np.ndarray,
                         targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([P, M] cosine per modality, [P, M] whether both entities have it)`` of row
        pairs."""
        modality = np.stack([self._row_cosines(m, sources, targets) for m in self.modalities],
                            axis=1)
        return modality, self.mask[sources] & self.mask[targets]

    def joint_rows(self, rows: np.ndarray) -> torch.Tensor:
        """The L2-normalised joint vectors of entity ``rows`` (either KG), on the CPU."""
        out = torch.empty(len(rows), self.indexes[1].vectors.shape[1])
        for kg in KGS:
            picked = np.flatnonzero(self.directory.kgs[rows] == kg)
            if len(picked):
                out[torch.from_numpy(picked)] = self.indexes[kg].rows(
                    self.directory.local[rows[picked]]).float().cpu()
        return out

    def _row_cosines(self, modality: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Cosine of ``modality`` between rows ``left[i]`` and ``right[i]``, for every i.

        Row-wise products in steps of ``SIMS_FLOATS`` gathered values, so memory stays bounded
        whatever the batch size and k (a padded [batch, k, d] gather took gigabytes for 1,024
        sources at k = 1,000). numpy, in one thread: a few rows per request, on any device.
        """
        table, inverse = self.tables[modality], self.inverse_norms[modality]
        out = np.empty(len(left), dtype=np.float32)
        step = max(1, SIMS_FLOATS // table.shape[1])
        for lo in range(0, len(left), step):
            a, b = left[lo:lo + step], right[lo:lo + step]
            dots = np.einsum("ij,ij->i", table[a].astype(np.float32),
                             table[b].astype(np.float32))
            out[lo:lo + step] = dots * inverse[a] * inverse[b]
        return out


def _rank(scores: torch.Tensor, gold: torch.Tensor) -> np.ndarray:
    """1 + the columns of each row of ``scores`` strictly above its ``gold`` column."""
    at_gold = scores.gather(1, gold[:, None])
    return (1 + (scores > at_gold).sum(dim=1)).cpu().numpy()


def _as_stored(table: torch.Tensor) -> torch.Tensor:
    """``table`` in float16 when that loses nothing (the checkpoint stores it so), else a
    float32 copy."""
    half = table.half()
    return half if torch.equal(half.float(), table) else table.clone()
