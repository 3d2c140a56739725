"""Ranking metrics of alignment pairs, in memory linear in the entities.

Test pairs are ranked the standard way: each test source against every test target (and the
reverse for the KG2→KG1 direction), by the three rankings of ``model/ranking.py``: cosine; CSLS,
its hubness terms taken over the test pairs; and the Sinkhorn ranking, whose potentials come
from a one-to-one plan over pools of entities (every unlabelled entity of both KGs for the
test), so it never learns which entities the test pairs are. The terms come from candidate
searches and a sparse plan, and every rank is counted exactly by streaming blocks of keys
(``model/similarity.py``): no ``[N1, N2]`` matrix is ever formed.

:func:`all_targets_metrics` ranks test sources among every entity of the other KG with the
terms a checkpoint stores for the service: the figure of what the service answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from mimea.model.finite import require_finite
from mimea.model.ranking import Ranking, RankingTerms, ScoreForm, ranking_terms, score_form
from mimea.model.similarity import TIE_TOLERANCE, count_at_least, normalise, streaming_gold_ranks

Similarity = Ranking
UnitRows = Callable[[torch.Tensor], torch.Tensor]
"""Entity rows ``[R]`` → their embeddings at unit norm ``[R, d]`` (see :func:`_unit_rows`)."""
CHUNK = 4096
DEFAULT_CANDIDATES = 100


def gold_ranks(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of the diagonal entry in each row of a dense block; ties count against
    the gold.

    Columns past the square part are distractors: targets that are nobody's gold. Both rules
    keep a broken model from looking perfect: a collapsed embedding (every score equal) ranks
    each gold last, not first, and a NaN or infinite score raises
    :class:`~model.finite.NonFiniteError` (compared with ``>``, a NaN would rank first).
    """
    gold = sim.diagonal()[:, None]
    ranks = torch.empty(sim.shape[0], dtype=torch.long)
    for start in range(0, sim.shape[0], CHUNK):
        block = sim[start:start + CHUNK]
        require_finite(block, f"the similarity scores of rows {start}..{start + len(block) - 1}")
        at_least = (block >= gold[start:start + CHUNK]).sum(dim=1)  # the gold counts itself
        ranks[start:start + CHUNK] = at_least.cpu()
    return ranks


def ranking_metrics(ranks: torch.Tensor, hits: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Hits@k, MRR and MR from 1-based ranks (ValueError for none: a mean of nothing is NaN)."""
    if len(ranks) == 0:
        raise ValueError("no pairs to rank")
    ranks = ranks.double()
    metrics = {f"hits{k}": float((ranks <= k).double().mean()) for k in hits}
    metrics["mrr"] = float((1.0 / ranks).mean())
    metrics["mr"] = float(ranks.mean())
    return metrics


def evaluate_pairs(embeddings: torch.Tensor, pairs: torch.Tensor, *,
                   method: Similarity = "csls", k: int = 10, sinkhorn_reg: float = 0.001,
                   sinkhorn_iterations: int = 20,
                   pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                   candidates: int = DEFAULT_CANDIDATES) -> dict[str, dict[str, float]]:
    """Metrics of ``pairs`` (rows ``[P, 2]``) in both directions, ranked among the pairs.

    ``pools`` (KG1 rows, KG2 rows, holding every pair's entities) is where the Sinkhorn
    ranking's plan is taken; without them, over the pairs. The plan's support is each pooled
    entity's ``candidates`` nearest entities of the other pool, both ways. Returns
    ``{"kg1_to_kg2": {...}, "kg2_to_kg1": {...}}``; KG1→KG2 is the headline.
    """
    return evaluate_rankings(embeddings, pairs, (method,), k=k, sinkhorn_reg=sinkhorn_reg,
                             sinkhorn_iterations=sinkhorn_iterations, pools=pools,
                             candidates=candidates)[method]


def evaluate_rankings(embeddings: torch.Tensor, pairs: torch.Tensor,
                      methods: tuple[Similarity, ...] = ("cosine", "csls", "sinkhorn"), *,
                      k: int = 10, sinkhorn_reg: float = 0.001, sinkhorn_iterations: int = 20,
                      pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                      candidates: int = DEFAULT_CANDIDATES,
                      ) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`evaluate_pairs` for several rankings at once: every rank of every ranking, both
    directions, comes from one pass over the pairs' cosine blocks."""
    ranks = rank_pairs(embeddings, pairs, methods, k=k, sinkhorn_reg=sinkhorn_reg,
                       sinkhorn_iterations=sinkhorn_iterations, pools=pools,
                       candidates=candidates)
    return {method: direction_metrics(both) for method, both in ranks.items()}


def rank_pairs(embeddings: torch.Tensor, pairs: torch.Tensor,
               methods: tuple[Similarity, ...] = ("cosine", "csls", "sinkhorn"), *,
               k: int = 10, sinkhorn_reg: float = 0.001, sinkhorn_iterations: int = 20,
               pools: tuple[torch.Tensor, torch.Tensor] | None = None,
               candidates: int = DEFAULT_CANDIDATES, plan: RankingTerms | None = None,
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The gold ranks behind :func:`evaluate_rankings`: for each ranking, ``[P]`` KG1→KG2 and
    ``[P]`` KG2→KG1 ranks, pair i's at i (a run's report draws their histogram).

    ``plan``, when the caller has it, is the Sinkhorn plan over ``pools``
    (``model.ranking.pool_plan`` with these settings), which the Sinkhorn ranking then reads
    instead of searching the pools again.
    """
    if plan is not None and pools is None:
        raise ValueError("a precomputed plan needs the pools it was taken over")
    unit = _unit_rows(embeddings)
    forms = {method: _pair_forms(unit, pairs, method, k, sinkhorn_reg, sinkhorn_iterations,
                                 pools, candidates, plan) for method in methods}
    return _pair_ranks(unit(pairs[:, 0]), unit(pairs[:, 1]), forms)


def direction_metrics(ranks: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{"kg1_to_kg2": ..., "kg2_to_kg1": ...}`` metrics of (forward, backward) ranks."""
    forward, backward = ranks
    return {"kg1_to_kg2": ranking_metrics(forward), "kg2_to_kg1": ranking_metrics(backward)}


def _pair_ranks(sources: torch.Tensor, targets: torch.Tensor,
                forms: dict[str, tuple[ScoreForm, ScoreForm]], *, block: int = 1024,
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Exact gold ranks of aligned ``sources [P, d]`` and ``targets [P, d]`` (pair i is the
    gold of row i) for each ranking's (KG1→KG2, KG2→KG1) score forms.

    Each ``[P, block]`` block of cosines serves every ranking and both directions: its rows
    rank targets for the sources, its columns rank sources for the targets of the block.
    Ties, within float32 rounding, count against the gold. Only the rows (columns) whose
    best possible score in the block reaches their gold are compared one by one: with a good
    ranking, few are.
    """
    gold_cos = (sources * targets).sum(dim=1)
    golds = {m: (_tolerant(f, gold_cos), _tolerant(b, gold_cos)) for m, (f, b) in forms.items()}
    ahead = {m: (torch.zeros(len(sources), dtype=torch.long),
                 torch.zeros(len(sources), dtype=torch.long)) for m in forms}
    for lo in range(0, len(targets), block):
        hi = min(lo + block, len(targets))
        cos = sources @ targets[lo:hi].T  # [P, hi - lo]
        row_max, col_max = cos.amax(dim=1), cos.amax(dim=0)
        by_target = cos.T.contiguous()  # its rows are read tile by tile, as cos's are
        for method, (forward, backward) in forms.items():
            gold_f, gold_b = golds[method]
            _count_ahead(ahead[method][0], cos, row_max, forward, gold_f,
                         keys=slice(lo, hi), own=torch.arange(lo, hi))
            _count_ahead(ahead[method][1][lo:hi], by_target, col_max, backward, gold_b[lo:hi],
                         keys=slice(None), own=torch.arange(lo, hi) - lo, own_key_offset=lo)
    return {method: (forward + 1, backward + 1) for method, (forward, backward) in ahead.items()}


def _count_ahead(ahead: torch.Tensor, cos: torch.Tensor, row_max: torch.Tensor,
                 form: ScoreForm, gold: torch.Tensor, *, keys: slice, own: torch.Tensor,
                 own_key_offset: int = 0) -> None:
    """Add to ``ahead`` (per query row of ``cos``) the keys of this block scoring at least the
    gold, leaving out each query's own gold key (query ``own[i]``'s gold is key
    ``own[i] + own_key_offset - keys.start`` of the block)."""
    bias = None if form.col_bias is None else form.col_bias[keys]
    bound = form.scale * row_max + (0.0 if bias is None else bias.max())
    busy = torch.nonzero(bound >= gold).squeeze(1)
    if len(busy) == 0:
        return
    ahead[busy] += count_at_least(cos, busy, gold[busy], scale=form.scale, bias=bias)
    gold_key = own + own_key_offset - (keys.start or 0)
    own_scores = form.scale * cos[own, gold_key]
    if bias is not None:
        own_scores += bias[gold_key]
    ahead[own] -= (own_scores >= gold[own]).long()


def _tolerant(form: ScoreForm, gold_cos: torch.Tensor) -> torch.Tensor:
    """A ranking's score of each pair (the row bias left out: it shifts a whole row), lowered
    by float32 rounding error so that a key tying with the gold counts against it whichever
    way its sum was rounded (as in ``model.similarity.streaming_gold_ranks``)."""
    gold = form.scale * gold_cos
    if form.col_bias is not None:
        gold = gold + form.col_bias
    return gold - TIE_TOLERANCE * (abs(form.scale) + gold.abs())


def _pair_forms(unit: UnitRows, pairs: torch.Tensor, method: Similarity, k: int, reg: float,
                iterations: int, pools: tuple[torch.Tensor, torch.Tensor] | None,
                candidates: int, plan: RankingTerms | None = None,
                ) -> tuple[ScoreForm, ScoreForm]:
    """The score forms of both directions of ``method`` among the pairs."""
    if method == "cosine":
        return score_form("cosine"), score_form("cosine")
    if method == "csls":
        terms = ranking_terms(unit(pairs[:, 0]), unit(pairs[:, 1]), k=k, candidates=k, unit=True)
        return (score_form("csls", terms.r_source, terms.r_target),
                score_form("csls", terms.r_target, terms.r_source))
    if method == "sinkhorn":
        sources, targets = pools if pools is not None else (pairs[:, 0], pairs[:, 1])
        rows = _positions(sources, pairs[:, 0], "source")
        cols = _positions(targets, pairs[:, 1], "target")
        terms = plan if plan is not None else ranking_terms(
            unit(sources), unit(targets), k=k, candidates=candidates, reg=reg,
            iterations=iterations, unit=True)
        assert terms.log_u is not None and terms.log_v is not None
        r1, r2 = terms.r_source[rows], terms.r_target[cols]
        return (score_form("sinkhorn", r1, r2, terms.log_v[cols], reg),
                score_form("sinkhorn", r2, r1, terms.log_u[rows], reg))
    raise ValueError(f"unknown similarity {method!r}; use 'cosine', 'csls' or 'sinkhorn'")


def all_targets_metrics(embeddings: torch.Tensor, pairs: torch.Tensor, kgs: torch.Tensor, *,
                        ranking: Ranking, csls_r: torch.Tensor | None,
                        potential: torch.Tensor | None, reg: float | None,
                        ) -> dict[str, object]:
    """Metrics of ``pairs`` with every entity of the other KG as a candidate (``kgs [N]``
    holds 1 or 2), ranked with the per-entity terms a checkpoint stores for the service
    (``model.ranking.serving_terms``): the figures of what ``GET /candidates`` answers."""
    unit = _unit_rows(embeddings)
    rows = {kg: torch.nonzero(kgs == kg).squeeze(1) for kg in (1, 2)}
    result: dict[str, object] = {"ranking": ranking}
    for direction, queries, golds, key_kg in (("kg1_to_kg2", pairs[:, 0], pairs[:, 1], 2),
                                              ("kg2_to_kg1", pairs[:, 1], pairs[:, 0], 1)):
        keys = rows[key_kg]
        form = score_form(ranking, None if csls_r is None else csls_r[queries],
                          None if csls_r is None else csls_r[keys],
                          None if potential is None else potential[keys], reg)
        gold = _positions(keys, golds, f"KG{key_kg} target")
        result[direction] = ranking_metrics(_ranks(unit(queries), gold, unit(keys), form))
    return result


def validation_metrics(embeddings: torch.Tensor, pairs: torch.Tensor,
                       distractors: torch.Tensor, *, k: int = 10) -> dict[str, float]:
    """CSLS metrics, KG1→KG2, of ``pairs`` ranked against their targets *and* ``distractors``.

    Among a few hundred validation targets alone nearly every model looks good; with every
    unlabelled KG2 entity as a distractor, the epoch that validates best is the one that ranks
    best among the test's thousands of candidates.
    """
    return pooled_metrics(embeddings, pairs, distractors, k=k)


def pooled_metrics(embeddings: torch.Tensor, pairs: torch.Tensor,
                   target_distractors: torch.Tensor,
                   source_distractors: torch.Tensor | None = None, *,
                   k: int = 10, method: Literal["csls", "sinkhorn"] = "csls",
                   sinkhorn_reg: float = 0.001, sinkhorn_iterations: int = 20,
                   candidates: int = DEFAULT_CANDIDATES) -> dict[str, float]:
    """CSLS (or Sinkhorn) metrics, KG1→KG2, of ``pairs`` ranked against their targets and
    ``target_distractors``, the targets' hubness terms (or the plan) taken over the pairs'
    sources and ``source_distractors``.

    With every unlabelled entity of both KGs in the pools, a few hundred validation pairs are
    ranked as the test pairs are, hubness terms and plan included: the setting in which to
    choose ``eval.csls_k`` and ``eval.sinkhorn_reg``.
    """
    unit = _unit_rows(embeddings)
    if source_distractors is None:
        source_distractors = pairs.new_empty(0)
    sources = torch.cat([pairs[:, 0], source_distractors])
    targets = unit(torch.cat([pairs[:, 1], target_distractors]))
    plan = method == "sinkhorn"
    terms = ranking_terms(unit(sources), targets, k=k, candidates=candidates if plan else k,
                          reg=sinkhorn_reg if plan else None, iterations=sinkhorn_iterations,
                          unit=True)
    form = score_form(method, terms.r_source[:len(pairs)], terms.r_target, terms.log_v,
                      sinkhorn_reg)
    return ranking_metrics(_ranks(unit(pairs[:, 0]), torch.arange(len(pairs)), targets, form))


def mutual_plan_pairs(embeddings: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor,
                      *, k: int = 10, sinkhorn_reg: float = 0.001, sinkhorn_iterations: int = 20,
                      candidates: int = DEFAULT_CANDIDATES) -> torch.Tensor:
    """Pairs ``[Q, 2]`` (entity rows) that are each other's best match in the Sinkhorn plan
    over the CSLS scores of the candidate pairs (each entity's ``candidates`` nearest of the
    other side, both ways): a one-to-one decoding of every candidate at once picks them."""
    unit = _unit_rows(embeddings)
    terms = ranking_terms(unit(sources), unit(targets), k=k, candidates=candidates,
                          reg=sinkhorn_reg, iterations=sinkhorn_iterations, unit=True)
    edges = terms.edges
    mutual = _mutual_edges(edges, terms.edge_log_plan(), len(sources), len(targets))
    picked = edges[mutual]
    return torch.stack([sources[picked[:, 0]], targets[picked[:, 1]]], dim=1)


def _mutual_edges(edges: torch.Tensor, values: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Bool ``[E]``: the edge is both its source's and its target's best (first on ties)."""
    return (_segment_best(values, edges[:, 0], n1) & _segment_best(values, edges[:, 1], n2))


def _segment_best(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Bool ``[E]``: the edge holds its segment's maximum, the earliest such edge on ties
    (edges are sorted by source then target, so that is the lowest other-side row)."""
    peak = values.new_full((size,), -torch.inf).scatter_reduce_(0, index, values, "amax")
    at_peak = values == peak[index]
    edge_ids = torch.arange(len(values), device=values.device)
    first = torch.full((size,), len(values), device=values.device).scatter_reduce_(
        0, index[at_peak], edge_ids[at_peak], "amin")
    return first[index] == edge_ids


def _unit_rows(embeddings: torch.Tensor) -> UnitRows:
    """A function giving rows of ``embeddings`` at unit norm, once they are checked finite
    (NonFiniteError naming the first bad row otherwise).

    The norm is per row, so normalising the rows gathered gives the values a normalised copy
    of the whole embedding would, without that copy (2 GB at 100k entities per KG).
    """
    require_finite(embeddings, "the joint embedding")
    source = embeddings.detach()
    return lambda rows: normalise(source[rows].float())


def _ranks(queries: torch.Tensor, gold: torch.Tensor, keys: torch.Tensor,
           form: ScoreForm) -> torch.Tensor:
    return streaming_gold_ranks(queries, gold, keys, scale=form.scale, row_bias=form.row_bias,
                                col_bias=form.col_bias)


def _positions(pool: torch.Tensor, rows: torch.Tensor, role: str) -> torch.Tensor:
    """Index of each of ``rows`` in ``pool`` (ValueError for a row the pool lacks)."""
    order = pool.argsort()
    found = torch.searchsorted(pool[order], rows.contiguous()).clamp(max=len(pool) - 1)
    at = order[found]
    missing = pool[at] != rows
    if missing.any():
        raise ValueError(f"{int(missing.sum())} pair {role}s are not in the pool ranked "
                         f"against, e.g. entity row {int(rows[missing][0])}")
    return at
