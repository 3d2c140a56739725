"""The numeric core of the service: a loaded checkpoint, its FAISS indexes and CSLS statistics.

Everything that does not depend on a request is computed once at load: L2-normalised joint and
per-modality embeddings (torch, on the serving device), one FAISS index per KG, each entity's
CSLS mean similarity r_k, and the URI → row lookup. The batch methods are synchronous and are
run off the event loop (see ``service.batcher``).

Scores, for a source s and a candidate t of the other KG:

- cosine(s, t) = <z_s, z_t> on the normalised joint embeddings;
- CSLS(s, t) = 2 cos(s, t) - r(s) - r(t), where r(x) is the mean cosine of x to its ``csls_k``
  nearest neighbours in the other KG;
- candidates with ``csls=True``: a pool of max(4k, 50) neighbours (capped at the KG size) is
  retrieved by cosine and re-ranked by CSLS, so a CSLS top-k entity outside that cosine pool is
  not returned;
- rank of t among s's candidates: 1 + the number of other-KG entities scoring strictly higher
  than t (exact, over the whole KG, for cosine and for CSLS);
- confidence(s, t) = sqrt(p(t | s) · p(s | t)) with p(t | s) = softmax_j(cos(s, j) / tau)[t]
  over every entity j of t's KG (tau = ``confidence_temperature``): a pair is confident only
  when each side singles the other out.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from model.device import resolve_device
from service.errors import StartupError
from service.index import KGIndex, build_index, gpu_count, set_threads
from service.settings import Settings
from service.suggest import PROBE_CHARS, Suggester

logger = logging.getLogger(__name__)

CSLS_POOL_MIN = 50
DEFAULT_CSLS_K = 10  # for checkpoints that do not say which k they were evaluated with
MAX_CSLS_K = 100  # as Settings.csls_k: r_k's cost at load grows with k
CSLS_POOL_FACTOR = 4
_CHUNK = 4096
SIMS_FLOATS = 1 << 22  # bounds the gathered modality rows (16 MB) of one similarity step


def csls_pool_size(k: int, kg_size: int) -> int:
    """Cosine pool re-ranked by CSLS for a top-k request."""
    return min(max(k * CSLS_POOL_FACTOR, CSLS_POOL_MIN), kg_size)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def evaluated_csls_k(config: dict[str, Any]) -> int:
    """The CSLS k a checkpoint's metrics were computed with (``eval.csls_k`` of its training
    config), so the service ranks as the figures it reports; 10, CSLS's usual k, when the
    checkpoint names none. Any other value is refused: r_k costs a k-NN search per entity at
    load, so a huge k would stall start-up instead of failing it."""
    k = config.get("config", {}).get("eval", {}).get("csls_k", DEFAULT_CSLS_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CSLS_K:
        raise CheckpointError(f"checkpoint config eval.csls_k must be an integer from 1 to "
                              f"{MAX_CSLS_K}, got {k!r:.40}; set MIMEA_CSLS_K to override it")
    return k


class Aligner:
    """A checkpoint ready to answer candidate and alignment queries."""

    def __init__(self, checkpoint: Checkpoint, settings: Settings) -> None:
        self.settings = settings
        try:
            self.device = resolve_device(settings.device)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        self.model_version = checkpoint.model_version
        self.modalities = checkpoint.modalities
        self.config = checkpoint.config
        self.metrics = checkpoint.metrics
        self.csls_k = settings.csls_k or evaluated_csls_k(checkpoint.config)
        self.temperature = settings.confidence_temperature
        # Loading is batched (BLAS-bound) and runs alone: use every core for it.
        set_threads(max(settings.threads, os.cpu_count() or 1))

        emb = checkpoint.embeddings
        tables = {"joint": emb.joint, "fusion_weights": emb.fusion_weights,
                  **{f"modality.{m}": t for m, t in emb.modalities.items()}}
        for name, tensor in tables.items():
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"checkpoint {checkpoint.path}: embedding {name!r} holds NaN or infinity")

        ents = checkpoint.entities
        self.uris: list[str] = list(ents.uris)
        self.ids: list[int] = list(ents.ids)
        self.kgs = np.asarray(ents.kgs, dtype=np.int64)
        self.row_of: dict[str, int] = {uri: row for row, uri in enumerate(self.uris)}
        self.rows = {kg: np.flatnonzero(self.kgs == kg) for kg in (1, 2)}
        self.local = np.empty(len(self.uris), dtype=np.int64)
        for kg in (1, 2):
            self.local[self.rows[kg]] = np.arange(len(self.rows[kg]))
        self.sizes = {kg: len(self.rows[kg]) for kg in (1, 2)}
        self._sorted = {kg: sorted(self.uris[r] for r in self.rows[kg]) for kg in (1, 2)}
        self.suggester = Suggester(self.uris)

        joint = _normalise(emb.joint.float())
        self.joint = joint.to(self.device)
        self.joint_kg = {kg: self.joint[torch.from_numpy(self.rows[kg]).to(self.device)]
                         for kg in (1, 2)}
        self.joint_np = {kg: np.ascontiguousarray(joint[torch.from_numpy(self.rows[kg])].numpy())
                         for kg in (1, 2)}
        self.mods = {m: _normalise(emb.modalities[m].float()).to(self.device)
                     for m in self.modalities}
        self.mask = emb.mask.bool().numpy()
        self.weights = emb.fusion_weights.float().numpy()
        self.embedding_dims = {"joint": int(joint.shape[1]),
                               **{m: int(t.shape[1]) for m, t in emb.modalities.items()}}

        use_gpu = self.device.type == "cuda" and gpu_count() > 0
        self.indexes: dict[int, KGIndex] = {
            kg: build_index(self.joint_np[kg], kind=settings.index, use_gpu=use_gpu,
                            hnsw_m=settings.hnsw_m, hnsw_ef_search=settings.hnsw_ef_search,
                            ivf_nlist=settings.ivf_nlist, ivf_nprobe=settings.ivf_nprobe,
                            precision=settings.search_precision)
            for kg in (1, 2)}
        self.r = self._csls_means()
        self.r_kg = {kg: self.r[self.rows[kg]] for kg in (1, 2)}
        self.r_kg_dev = {kg: torch.from_numpy(self.r_kg[kg]).to(self.device) for kg in (1, 2)}

    @classmethod
    def load(cls, settings: Settings) -> Aligner:
        """Load and validate ``settings.checkpoint``; raise CheckpointError/StartupError."""
        if settings.checkpoint is None:
            raise StartupError("no checkpoint: set MIMEA_CHECKPOINT or pass --checkpoint")
        start = time.perf_counter()
        aligner = cls(load_checkpoint(settings.checkpoint), settings)
        logger.info("loaded checkpoint %s (model %s, %d + %d entities, %s index, %s) in %.2fs",
                    settings.checkpoint, aligner.model_version, aligner.sizes[1],
                    aligner.sizes[2], settings.index, aligner.device,
                    time.perf_counter() - start)
        return aligner

    def close(self) -> None:
        """Drop indexes and device tensors (GPU memory is released with them)."""
        self.indexes.clear()
        self.mods.clear()

    # ----------------------------------------------------------------------------- lookups

    def suggest(self, uri: str) -> list[str]:
        """Close identifiers for an unknown one (trigram shortlist, memoised; service.suggest)."""
        return list(self.suggester.suggest(uri[:PROBE_CHARS]))

    def find_entities(self, kg: int | None, prefix: str, limit: int) -> tuple[list[int], bool]:
        """Rows of entities whose URI starts with ``prefix``, sorted by URI; and whether more."""
        uris = self.suggester.sorted if kg is None else self._sorted[kg]
        start = bisect.bisect_left(uris, prefix)
        found: list[int] = []
        for uri in uris[start:start + limit + 1]:
            if not uri.startswith(prefix):
                break
            found.append(self.row_of[uri])
        return found[:limit], len(found) > limit

    # ------------------------------------------------------------------------------ CSLS

    def _csls_means(self) -> np.ndarray:
        """r(x) for every entity: mean cosine to its csls_k neighbours in the other KG."""
        r = np.zeros(len(self.uris), dtype=np.float32)
        for kg in (1, 2):
            other = 3 - kg
            k = min(self.csls_k, self.sizes[other])
            queries = self.joint_np[kg]
            for lo in range(0, len(queries), _CHUNK):
                scores, ids = self.indexes[other].search(queries[lo:lo + _CHUNK], k)
                valid = ids >= 0
                sums = np.where(valid, scores, 0.0).sum(axis=1)
                r[self.rows[kg][lo:lo + _CHUNK]] = sums / np.maximum(valid.sum(axis=1), 1)
        return r

    # ------------------------------------------------------------------------ candidates

    def search(self, kg: int, local_rows: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the index of KG ``3 - kg`` with KG ``kg``'s rows; return (scores, local ids)."""
        return self.indexes[3 - kg].search(self.joint_np[kg][local_rows], pool)

    def candidates_batch(self, queries: Sequence[tuple[int, int, bool]]
                         ) -> list[dict[str, Any]]:
        """Top-k of the other KG for each (row, k, csls); one index search per source KG."""
        results: list[dict[str, Any] | None] = [None] * len(queries)
        for kg in (1, 2):
            picked = [i for i, q in enumerate(queries) if self.kgs[q[0]] == kg]
            if not picked:
                continue
            other = 3 - kg
            pools = [csls_pool_size(queries[i][1], self.sizes[other]) if queries[i][2]
                     else min(queries[i][1], self.sizes[other]) for i in picked]
            src = np.array([queries[i][0] for i in picked], dtype=np.int64)
            scores, ids = self.search(kg, self.local[src], max(pools))
            chosen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            for j, i in enumerate(picked):
                _, k, csls = queries[i]
                s, d = scores[j, :pools[j]], ids[j, :pools[j]]
                keep = d >= 0
                s, d = s[keep], d[keep]
                c = 2.0 * s - self.r[src[j]] - self.r_kg[other][d]
                if csls:
                    order = np.argsort(-c, kind="stable")[:k]
                    s, d, c = s[order], d[order], c[order]
                chosen.append((s[:k], self.rows[other][d[:k]], c[:k]))
            sims = self._modality_sims(src, [rows for _, rows, _ in chosen])
            for j, i in enumerate(picked):
                results[i] = self._candidates_result(int(src[j]), other, queries[i], chosen[j],
                                                     sims[j])
        return [r for r in results if r is not None]

    def _modality_sims(self, src: np.ndarray, cand_rows: list[np.ndarray]
                       ) -> list[dict[str, list[float | None]]]:
        """Per-modality cosine of each source to each of its candidates, None where missing.

        A row-wise dot product over (source, candidate) pairs in steps of ``SIMS_FLOATS``
        gathered values: memory stays bounded whatever the batch size and k (a padded
        [batch, k, d] gather took gigabytes for 1,024 sources at k = 1,000).
        """
        counts = [len(rows) for rows in cand_rows]
        pair_src = np.repeat(src, counts)
        pair_cand = np.concatenate(cand_rows) if cand_rows else np.empty(0, np.int64)
        present = self.mask[pair_src] & self.mask[pair_cand]  # [pairs, M]
        sims = np.stack([self._row_dots(self.mods[m], pair_src, pair_cand)
                         for m in self.modalities], axis=1)  # [pairs, M]
        out: list[dict[str, list[float | None]]] = []
        lo = 0
        for count in counts:
            values, keep = sims[lo:lo + count].T.tolist(), present[lo:lo + count].T.tolist()
            out.append({m: [v if p else None for v, p in zip(values[i], keep[i], strict=True)]
                        for i, m in enumerate(self.modalities)})
            lo += count
        return out

    def _row_dots(self, table: torch.Tensor, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """<table[left[i]], table[right[i]]> for every i, in bounded steps."""
        out = np.empty(len(left), dtype=np.float32)
        step = max(1, SIMS_FLOATS // max(1, table.shape[1]))
        for lo in range(0, len(left), step):
            a = torch.from_numpy(left[lo:lo + step]).to(self.device)
            b = torch.from_numpy(right[lo:lo + step]).to(self.device)
            out[lo:lo + step] = (table[a] * table[b]).sum(1).cpu().numpy()
        return out

    def _candidates_result(self, src: int, other: int, query: tuple[int, int, bool],
                           chosen: tuple[np.ndarray, np.ndarray, np.ndarray],
                           sims: dict[str, list[float | None]]) -> dict[str, Any]:
        _, k, csls = query
        cos, rows, csls_scores = (a.tolist() for a in chosen)
        scores = csls_scores if csls else cos
        uris, mods = self.uris, self.modalities
        candidates = [
            {"entity": uris[row], "kg": other, "rank": n + 1, "score": scores[n],
             "cosine": cos[n], "csls": csls_scores[n],
             "modality_similarity": {m: sims[m][n] for m in mods}}
            for n, row in enumerate(rows)]
        return {"entity": uris[src], "kg": int(self.kgs[src]), "target_kg": other, "k": k,
                "metric": "csls" if csls else "cosine", "candidates": candidates}

    # ----------------------------------------------------------------------------- align

    def align_batch(self, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Scores, exact ranks both ways, mutual NN and confidence for (source, target) rows."""
        results: list[dict[str, Any] | None] = [None] * len(pairs)
        for kg in (1, 2):
            picked = [i for i, (s, _) in enumerate(pairs) if self.kgs[s] == kg]
            for lo in range(0, len(picked), 256):
                chunk = picked[lo:lo + 256]
                src = np.array([pairs[i][0] for i in chunk], dtype=np.int64)
                tgt = np.array([pairs[i][1] for i in chunk], dtype=np.int64)
                stats = self._pair_stats(kg, src, tgt)
                for j, i in enumerate(chunk):
                    results[i] = self._align_result(int(src[j]), int(tgt[j]),
                                                    {key: v[j] for key, v in stats.items()})
        return [r for r in results if r is not None]

    def _pair_stats(self, kg: int, src: np.ndarray, tgt: np.ndarray) -> dict[str, list[Any]]:
        """One matmul row per source (over the other KG) and per target (over this KG)."""
        other = 3 - kg
        dev = self.device
        s_loc = torch.from_numpy(self.local[src]).to(dev)
        t_loc = torch.from_numpy(self.local[tgt]).to(dev)
        s_vec = self.joint_kg[kg][s_loc]
        t_vec = self.joint_kg[other][t_loc]
        fwd = s_vec @ self.joint_kg[other].T  # [B, n_other]: source vs every target candidate
        bwd = t_vec @ self.joint_kg[kg].T  # [B, n_kg]: target vs every source candidate
        r_src, r_oth = self.r_kg_dev[kg], self.r_kg_dev[other]
        ar = torch.arange(len(src), device=dev)
        out: dict[str, torch.Tensor] = {}
        cos_f = fwd[ar, t_loc]
        cos_b = bwd[ar, s_loc]
        out["cosine"] = cos_f
        out["rank_t_cos"] = 1 + (fwd > cos_f[:, None]).sum(1)
        out["rank_s_cos"] = 1 + (bwd > cos_b[:, None]).sum(1)
        csls_f = 2 * fwd - r_src[s_loc][:, None] - r_oth[None, :]
        csls_b = 2 * bwd - r_oth[t_loc][:, None] - r_src[None, :]
        out["csls"] = csls_f[ar, t_loc]
        out["rank_t_csls"] = 1 + (csls_f > csls_f[ar, t_loc][:, None]).sum(1)
        out["rank_s_csls"] = 1 + (csls_b > csls_b[ar, s_loc][:, None]).sum(1)
        p_f = torch.softmax(fwd / self.temperature, dim=1)[ar, t_loc]
        p_b = torch.softmax(bwd / self.temperature, dim=1)[ar, s_loc]
        out["confidence"] = (p_f * p_b).sqrt().clamp(0.0, 1.0)
        mod_sims = torch.stack([(self.mods[m][torch.from_numpy(src).to(dev)]
                                 * self.mods[m][torch.from_numpy(tgt).to(dev)]).sum(1)
                                for m in self.modalities], dim=1)  # [B, M]
        stats: dict[str, list[Any]] = {k: v.cpu().tolist() for k, v in out.items()}
        stats["modality"] = mod_sims.cpu().tolist()
        return stats

    def _align_result(self, src: int, tgt: int, st: dict[str, Any]) -> dict[str, Any]:
        mods = self.modalities
        sm, tm = self.mask[src].tolist(), self.mask[tgt].tolist()
        sw, tw = self.weights[src].tolist(), self.weights[tgt].tolist()
        similarity = {m: st["modality"][i] if sm[i] and tm[i] else None
                      for i, m in enumerate(mods)}
        return {
            "source": {"entity": self.uris[src], "kg": int(self.kgs[src])},
            "target": {"entity": self.uris[tgt], "kg": int(self.kgs[tgt])},
            "cosine": st["cosine"], "csls": st["csls"],
            "target_rank": {"cosine": st["rank_t_cos"], "csls": st["rank_t_csls"]},
            "source_rank": {"cosine": st["rank_s_cos"], "csls": st["rank_s_csls"]},
            "mutual_nearest": st["rank_t_cos"] == 1 and st["rank_s_cos"] == 1,
            "confidence": st["confidence"],
            "modalities": {
                "similarity": similarity,
                "source_weights": dict(zip(mods, sw, strict=True)),
                "target_weights": dict(zip(mods, tw, strict=True)),
                "source_missing": [m for i, m in enumerate(mods) if not sm[i]],
                "target_missing": [m for i, m in enumerate(mods) if not tm[i]],
            },
        }

    def info(self) -> dict[str, Any]:
        """What ``GET /model`` reports."""
        return {"model_version": self.model_version, "modalities": self.modalities,
                "embedding_dims": self.embedding_dims,
                "entities": {"kg1": self.sizes[1], "kg2": self.sizes[2]},
                "metrics": self.metrics, "index": self.settings.index,
                "device": str(self.device), "csls_k": self.csls_k,
                "index_on_gpu": any(i.on_gpu for i in self.indexes.values()),
                "search_precision": self.indexes[1].precision}
