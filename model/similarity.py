"""Similarity search and alignment decoding that scale past dense ``[N1, N2]`` matrices.

At 100k-1M entities per KG a dense score matrix holds 10^10-10^12 entries, so every step here
is bounded by candidate lists or by one block of keys at a time:

- FAISS top-K search gives each entity its K best partners of the other KG, and with them its
  CSLS hubness term r (the mean of its k best cosines);
- the union of both directions' lists is the support of a sparse log-domain Sinkhorn plan,
  which on a complete support reproduces POT's ``sinkhorn_log`` step for step;
- ranking by the plan over a whole KG is a maximum inner product search over keys augmented
  with one bias coordinate (for serving), or an exact streaming rank count (for evaluation).

Embeddings are float32 ``[N, d]`` tensors; normalise them first so inner products are cosines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from mimea.model.underflow import exp_above_underflow

IndexKind = Literal["auto", "flat", "ivf"]
FLAT_MAX_KEYS = 250_000  # exact cost grows as N^2: 100k per side ~1.5 min per direction on 2 cores
IVF_LISTS_PER_ROOT = 4  # nlist ~ 4 sqrt(n): lists of ~sqrt(n)/4 keys
IVF_MIN_PER_LIST = 39  # below this many keys per centroid faiss k-means is unreliable
IVF_TRAIN_PER_LIST = 64  # k-means sample per list: centroids as good, training n/64x cheaper
IVF_NPROBE = 32
GPU_MAX_K = 2048  # faiss GPU k-selection limit
SEARCH_BLOCK = 65_536  # queries per faiss call: bounds the [block, k] result buffers
RANK_BLOCK = 4_096  # keys per streamed score block
TIE_TOLERANCE = 1e-5  # relative: float32 dot products of unit vectors agree to ~1e-6
EDGE_BLOCK = 1 << 20  # edges per gather in edge_cosine
COUNT_TILE = 256  # score rows compared at a time when counting keys ahead of a gold


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows at unit L2 norm, so inner products are cosines (all-zero rows stay zero)."""
    return F.normalize(x, dim=-1)


def edge_cosine(source: torch.Tensor, target: torch.Tensor, edges: torch.Tensor, *,
                block: int = EDGE_BLOCK) -> torch.Tensor:
    """Inner product ``[E]`` of each edge (source row, target row) of normalised embeddings,
    gathering ``block`` edges at a time so only ``[block, d]`` copies exist."""
    out = source.new_empty(len(edges))
    for lo in range(0, len(edges), block):
        part = edges[lo:lo + block]
        out[lo:lo + block] = (source[part[:, 0]] * target[part[:, 1]]).sum(dim=-1)
    return out


def csls_scores(cos: torch.Tensor, r_source: torch.Tensor,
                r_target: torch.Tensor) -> torch.Tensor:
    r"""Cross-domain similarity local scaling, :math:`2\cos(s, t) - r_T(s) - r_S(t)`.

    ``cos`` is either per edge ``[E]`` with both r gathered at the edges' ends (``[E]`` each),
    or a dense block ``[S, T]`` with ``r_source [S]`` and ``r_target [T]``.
    """
    if cos.dim() == 2:
        return 2 * cos - r_source[:, None] - r_target[None, :]
    return 2 * cos - r_source - r_target


def csls_means(cand_scores: torch.Tensor, k: int) -> torch.Tensor:
    """CSLS hubness term r ``[Q]``: mean of each row's first ``k`` candidate scores.

    Search returns candidates best first, so r comes with the candidates at no extra cost.
    Missing candidates (``-inf``, an IVF probe that found fewer than k keys) are left out; a
    row with none gets 0.
    """
    top = cand_scores[:, :k]
    found = torch.isfinite(top)
    total = torch.where(found, top, torch.zeros_like(top)).sum(dim=1)
    return total / found.sum(dim=1).clamp(min=1)


@dataclass
class InnerProductIndex:
    """A FAISS inner-product index over ``size`` keys and, on a GPU, the resources it holds."""

    index: Any
    size: int
    gpu_resources: Any = None

    @property
    def max_k(self) -> int:
        return min(self.size, GPU_MAX_K) if self.gpu_resources is not None else self.size

    def search(self, queries: torch.Tensor, k: int, *,
               block: int = SEARCH_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores [Q, k] float32, ids [Q, k] int64)``, best first.

        ``k`` is clamped to :attr:`max_k`. Queries go to faiss ``block`` at a time into
        preallocated outputs. A missing result (IVF) has id -1 and score ``-inf``.
        """
        q = _as_faiss(queries)
        k = max(1, min(k, self.max_k))
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        for lo in range(0, len(q), block):
            hi = lo + block
            self.index.search(q[lo:hi], k, D=scores[lo:hi], I=ids[lo:hi])
        scores[ids < 0] = -np.inf
        return torch.from_numpy(scores), torch.from_numpy(ids)


def build_ip_index(keys: torch.Tensor, *, index: IndexKind = "auto", nlist: int | None = None,
                   nprobe: int = IVF_NPROBE, use_gpu: bool = False) -> InnerProductIndex:
    """Inner-product index over ``keys [N, d]``: exact flat up to :data:`FLAT_MAX_KEYS` keys
    (``auto``), IVF beyond, where an exact scan of every key per query no longer pays.

    With ``use_gpu`` the index moves to the first GPU when faiss sees one.
    """
    vectors = _as_faiss(keys)
    n, dim = vectors.shape
    kind = ("flat" if n <= FLAT_MAX_KEYS else "ivf") if index == "auto" else index
    if kind == "flat":
        built: Any = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        built = _trained_ivf(vectors, nlist or ivf_lists(n), nprobe)
    else:
        raise ValueError(f"unknown index {index!r}; use 'auto', 'flat' or 'ivf'")
    built.add(vectors)
    if use_gpu and gpu_count() > 0:
        resources = faiss.StandardGpuResources()
        return InnerProductIndex(faiss.index_cpu_to_gpu(resources, 0, built), n, resources)
    return InnerProductIndex(built, n)


def topk_candidates(queries: torch.Tensor, keys: torch.Tensor, k: int, *,
                    block: int = SEARCH_BLOCK, index: IndexKind = "auto",
                    nprobe: int = IVF_NPROBE,
                    use_gpu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` best keys by inner product: ``(scores [Q, k], ids [Q, k])``.

    See :func:`build_ip_index` for ``index``, ``nprobe`` and ``use_gpu`` and
    :meth:`InnerProductIndex.search` for missing results. No ``[Q, N]`` matrix is formed.
    """
    built = build_ip_index(keys, index=index, nprobe=nprobe, use_gpu=use_gpu)
    return built.search(queries, k, block=block)


def two_way_topk(source: torch.Tensor, target: torch.Tensor, k: int, *,
                 block: int = 8192, tile: int = 16_384,
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Exact top-``k`` of each source among the targets *and* of each target among the
    sources, ``((scores [n1, k], ids [n1, k]), (scores [n2, k'], ids [n2, k'])``, best first.

    Both directions read the same inner products, so one pass over ``[block, tile]`` tiles
    gives both: half the work of two flat searches, the cost that dominates decoding. Each
    tile's rows give its sources' best targets; a transposed copy gives its targets' best
    sources, since a top-k along a tile's columns reads them with a stride and on the CPU took
    longer than the product itself. Both merge into running lists; memory is one tile, its
    copy and the lists.

    The products stay float32: bfloat16 ones run four to five times faster on AMX CPUs but
    round a cosine near 0.6 to steps of 0.004, and on a 104,500-entity pair, where a hundred
    keys crowd within that of a source's 100th, lists screened in bfloat16 and rescored in
    float32 missed one key in seven of the exact lists and the Sinkhorn plan over them ranked
    almost nothing right (served Hits@1 0.003 against 0.754).
    """
    k_rows, k_cols = min(k, len(target)), min(k, len(source))
    row_scores = source.new_full((len(source), k_rows), -torch.inf)
    row_ids = torch.zeros(len(source), k_rows, dtype=torch.long)
    col_scores = source.new_full((len(target), k_cols), -torch.inf)
    col_ids = torch.zeros(len(target), k_cols, dtype=torch.long)
    for lo in range(0, len(source), block):
        rows = slice(lo, lo + block)
        for at in range(0, len(target), tile):
            cols = slice(at, at + tile)
            scores = source[rows] @ target[cols].T
            _merge_topk(row_scores[rows], row_ids[rows], scores, at)
            _merge_topk(col_scores[cols], col_ids[cols], scores.T.contiguous(), lo)
    return (row_scores, row_ids), (col_scores, col_ids)


def _merge_topk(best: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor,
                offset: int) -> None:
    """Fold each row of ``scores [R, C]`` (columns ``offset`` onwards) into that row's running
    top-k ``best [R, k]`` / ``ids [R, k]``, in place."""
    top, at = scores.topk(min(best.shape[1], scores.shape[1]), dim=1)
    merged, pick = torch.cat([best, top], dim=1).topk(best.shape[1], dim=1)
    ids.copy_(torch.cat([ids, at + offset], dim=1).gather(1, pick))
    best.copy_(merged)


def ivf_lists(n: int) -> int:
    """IVF list count for ``n`` keys: ~4 sqrt(n), fewer where lists would hold under 39."""
    return max(1, min(int(IVF_LISTS_PER_ROOT * math.sqrt(n)), n // IVF_MIN_PER_LIST))


def _trained_ivf(vectors: np.ndarray, nlist: int, nprobe: int) -> Any:
    """An empty IVF-flat inner-product index, its centroids trained by spherical k-means on
    at most :data:`IVF_TRAIN_PER_LIST` keys per list (faiss's seeded subsample)."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    index.cp.spherical = True  # unit centroids: assignment by inner product is by angle
    index.train(vectors)
    index.nprobe = min(nprobe, nlist)
    return index


def _as_faiss(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 CPU array of ``x`` (shared memory where ``x`` already is one)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def gpu_count() -> int:
    """GPUs faiss can use (0 for faiss-cpu builds)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def candidate_pairs(ids_12: torch.Tensor, ids_21: torch.Tensor, n1: int,
                    n2: int) -> torch.Tensor:
    """Union of both directions' candidate lists as edges ``[E, 2]`` (KG1 row, KG2 row),
    deduplicated and sorted by source, then target.

    ``ids_12 [n1, K]`` are KG2 rows per KG1 row, ``ids_21 [n2, K']`` KG1 rows per KG2 row;
    -1 entries (missing results) are skipped.
    """
    keys = _pair_keys(ids_12, ids_21, n1, n2)
    return _decode(torch.unique(keys[keys >= 0], sorted=True), n2)


def candidate_edges(ids_12: torch.Tensor, scores_12: torch.Tensor, ids_21: torch.Tensor,
                    scores_21: torch.Tensor, n1: int,
                    n2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`candidate_pairs` and each edge's score ``[E]`` taken from the searches.

    A pair listed in both directions has its inner product computed twice, equal up to
    rounding; the larger is kept, so the result does not depend on scatter order.
    """
    keys = _pair_keys(ids_12, ids_21, n1, n2)
    values = torch.cat([scores_12.flatten(), scores_21.flatten()])
    listed = keys >= 0
    unique, inverse = torch.unique(keys[listed], sorted=True, return_inverse=True)
    scores = values.new_empty(len(unique)).scatter_reduce_(0, inverse, values[listed], "amax",
                                                           include_self=False)
    return _decode(unique, n2), scores


def _pair_keys(ids_12: torch.Tensor, ids_21: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """One int64 key ``s * n2 + t`` per listed pair, KG1→KG2 lists then KG2→KG1 lists, -1
    where a list entry is missing."""
    if len(ids_12) != n1 or len(ids_21) != n2:
        raise ValueError(f"candidate lists cover {len(ids_12)} and {len(ids_21)} rows, "
                         f"expected {n1} and {n2}")
    keys_12 = torch.arange(n1, device=ids_12.device)[:, None] * n2 + ids_12
    keys_21 = ids_21 * n2 + torch.arange(n2, device=ids_21.device)[:, None]
    return torch.cat([keys_12.where(ids_12 >= 0, -1).flatten(),
                      keys_21.where(ids_21 >= 0, -1).flatten()])


def _decode(keys: torch.Tensor, n2: int) -> torch.Tensor:
    """Edges ``[E, 2]`` of pair keys ``s * n2 + t``."""
    return torch.stack([keys // n2, keys % n2], dim=1)


def sparse_sinkhorn(edges: torch.Tensor, scores: torch.Tensor, n1: int, n2: int, *,
                    reg: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Log scalings ``(log u [n1], log v [n2])`` of the entropic plan with uniform marginals
    whose support is ``edges [E, 2]``: on the support
    :math:`\log P_{st} = \log u_s + \log v_t + \mathrm{scores}_{st} / \mathrm{reg}`, elsewhere 0.

    Same start (zeros) and order (v, then u, per iteration) as POT's ``sinkhorn_log`` with
    cost ``-scores``, so on a complete support the result is POT's. A row or column without an
    edge carries no mass: its potential is ``-inf``. Memory O(E), never O(n1 n2).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if torch.isnan(scores).any():
        raise ValueError("NaN in the Sinkhorn scores")
    gain = scores / reg
    sources, targets = edges[:, 0].contiguous(), edges[:, 1].contiguous()
    log_a, log_b = -math.log(n1), -math.log(n2)
    log_u = gain.new_zeros(n1)
    log_v = gain.new_zeros(n2)
    for _ in range(iterations):
        log_v = _half_step(log_b, gain + log_u[sources], targets, n2)
        log_u = _half_step(log_a, gain + log_v[targets], sources, n1)
    return log_u, log_v


def _half_step(log_marginal: float, values: torch.Tensor, index: torch.Tensor,
               size: int) -> torch.Tensor:
    """Potentials that give each segment of ``index`` its marginal: log marginal minus the
    segment's log-sum-exp, ``-inf`` for an empty segment (instead of ``+inf``)."""
    lse = segment_logsumexp(values, index, size)
    return torch.where(torch.isneginf(lse), lse, log_marginal - lse)


def segment_logsumexp(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``log sum exp`` of ``values [E]`` per segment ``index [E]`` (``[size]``), shifted by
    each segment's maximum so no exp overflows (and taken with ``exp_above_underflow``, so
    the far smaller ones stay on the fast path); ``-inf`` for an empty segment or one of
    ``-inf`` values only."""
    peak = values.new_full((size,), -math.inf).scatter_reduce_(0, index, values, "amax")
    empty = torch.isneginf(peak)
    shift = torch.where(empty, torch.zeros_like(peak), peak)
    total = values.new_zeros(size).index_add_(0, index,
                                              exp_above_underflow(values - shift[index]))
    return torch.where(empty, peak, shift + total.log())


def sinkhorn_bias(log_v: torch.Tensor, r_target: torch.Tensor, reg: float) -> torch.Tensor:
    r"""Per-target term ``[N]`` of the Sinkhorn ranking in inner-product units.

    A source s ranks target t by :math:`\mathrm{CSLS}(s, t) / \mathrm{reg} + \log v_t =
    \tfrac{2}{\mathrm{reg}} (\langle z_s, z_t\rangle + (\mathrm{reg} \log v_t - r_t) / 2)
    - r_s / \mathrm{reg}`, the same order as :math:`\langle z_s, z_t\rangle` plus this term.
    A target without mass (``log v = -inf``) gets ``-inf``: it ranks last.
    """
    return (reg * log_v - r_target) / 2


def augmented_keys(keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Keys ``[N, d + 1]`` whose last coordinate holds ``bias``: with :func:`augmented_query`
    an inner-product index ranks by ``<q, k> + bias``, e.g. the Sinkhorn ranking with
    :func:`sinkhorn_bias` (use an exact index where a bias is ``-inf``)."""
    return torch.cat([keys, bias[:, None].to(keys.dtype)], dim=1)


def augmented_query(queries: torch.Tensor) -> torch.Tensor:
    """Queries ``[Q, d + 1]`` with a last coordinate of 1 (see :func:`augmented_keys`)."""
    return torch.cat([queries, queries.new_ones(len(queries), 1)], dim=1)


def streaming_gold_ranks(queries: torch.Tensor, gold: torch.Tensor, keys: torch.Tensor, *,
                         scale: float = 1.0, row_bias: torch.Tensor | None = None,
                         col_bias: torch.Tensor | None = None,
                         block: int = RANK_BLOCK) -> torch.Tensor:
    r"""1-based rank ``[B]`` of key ``gold[i]`` among all keys for query i, under the score
    :math:`\mathrm{scale} \langle q_i, k_j\rangle + \mathrm{row\_bias}_i + \mathrm{col\_bias}_j`.

    That form covers cosine (scale 1), CSLS (scale 2, biases ``-r``) and the Sinkhorn ranking
    (scale ``2 / reg``, ``col_bias = log v - r / reg``). Keys stream ``block`` at a time, so
    memory is O(B block) and the ranks are exact over every key. A key scoring the same as the
    gold counts against it; a NaN score raises ValueError rather than ranking anything first.
    A finite row bias shifts a whole row, so it is not added to each score; an infinite one
    ties every key, ranking the gold last.
    """
    if row_bias is None:
        row_bias = queries.new_zeros(len(queries))
    if col_bias is None:
        col_bias = keys.new_zeros(len(keys))
    gold_score = scale * (queries * keys[gold]).sum(dim=1) + col_bias[gold]
    if torch.isnan(gold_score + row_bias).any():
        raise ValueError("NaN in the gold scores")
    # The gold's score here and a key's score in a block come from different float32 sums; a
    # key within their rounding error of the gold ties with it, and ties count against it.
    gold_score = gold_score - TIE_TOLERANCE * (abs(scale) + gold_score.abs())
    ahead = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
    for lo in range(0, len(keys), block):
        hi = min(lo + block, len(keys))
        scores = torch.addmm(col_bias[None, lo:hi], queries, keys[lo:hi].T, alpha=scale)
        ahead += _at_least_gold(scores, gold_score, gold - lo)
    return torch.where(torch.isinf(row_bias), len(keys), ahead + 1)


def _at_least_gold(scores: torch.Tensor, gold_score: torch.Tensor,
                   gold_col: torch.Tensor) -> torch.Tensor:
    """Per row, the columns of ``scores`` at or above the gold's score, the gold's own column
    (``gold_col``, outside the block for most rows) left out.

    Only rows whose best column reaches the gold are counted: with a good ranking most rows
    have none, and a row maximum (which propagates NaN) costs a tenth of a full count.
    """
    best = scores.amax(dim=1)
    if torch.isnan(best).any():
        raise ValueError("NaN in the scores")
    counts = torch.zeros_like(gold_col)
    busy = torch.nonzero(best >= gold_score).squeeze(1)
    counts[busy] = count_at_least(scores, busy, gold_score[busy])
    own = torch.nonzero((gold_col >= 0) & (gold_col < scores.shape[1])).squeeze(1)
    counts[own] -= (scores[own, gold_col[own]] >= gold_score[own]).long()
    return counts


def count_at_least(matrix: torch.Tensor, rows: torch.Tensor, floor: torch.Tensor, *,
                   scale: float = 1.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """For each of ``rows`` of ``matrix [R, C]``, how many columns j score
    ``scale * matrix[row, j] + bias[j]`` at or above its ``floor``: ``[len(rows)]`` int64.

    Rows go :data:`COUNT_TILE` at a time, so that a tile's scores are computed, compared and
    counted while in cache: on a whole ``[R, C]`` block each of those steps is a pass over
    main memory, four times slower in all.
    """
    counts = torch.empty(len(rows), dtype=torch.long, device=matrix.device)
    for lo in range(0, len(rows), COUNT_TILE):
        picked = rows[lo:lo + COUNT_TILE]
        tile = matrix[picked]
        if bias is not None:
            tile = torch.add(bias, tile, alpha=scale)
        elif scale != 1.0:
            tile = tile * scale
        counts[lo:lo + len(picked)] = torch.count_nonzero(
            tile >= floor[lo:lo + len(picked), None], dim=1)
    return counts
