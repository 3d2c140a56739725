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
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from mimea.model.finite import NonFiniteError, require_finite
from mimea.model.ranking import Ranking, RankingTerms, ScoreForm, ranking_terms, score_form
from mimea.model.similarity import (
    TIE_TOLERANCE,
    count_at_least,
    csls_means,
    normalise,
    streaming_gold_ranks,
    two_way_topk,
)

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
               served: ServedTerms | None = None,
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The gold ranks behind :func:`evaluate_rankings`: for each ranking, ``[P]`` KG1→KG2 and
    ``[P]`` KG2→KG1 ranks, pair i's at i (a run's report draws their histogram).

    ``plan``, when the caller has it, is the Sinkhorn plan over ``pools``
    (``model.ranking.pool_plan`` with these settings), which the Sinkhorn ranking then reads
    instead of searching the pools again. With ``served``, the same pass also ranks each
    pair among every entity of the other KG as the service does, under the key
    ``"all_targets"`` (what :func:`all_targets_metrics` ranks).
    """
    if plan is not None and pools is None:
        raise ValueError("a precomputed plan needs the pools it was taken over")
    unit = _unit_rows(embeddings)
    forms = {method: _pair_forms(unit, pairs, method, k, sinkhorn_reg, sinkhorn_iterations,
                                 pools, candidates, plan) for method in methods}
    ranks, all_targets = _one_pass_ranks(
        unit, pairs, forms, None if served is None else _served_forms(served, pairs))
    return ranks if all_targets is None else {**ranks, "all_targets": all_targets}


def direction_metrics(ranks: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{"kg1_to_kg2": ..., "kg2_to_kg1": ...}`` metrics of (forward, backward) ranks."""
    forward, backward = ranks
    return {"kg1_to_kg2": ranking_metrics(forward), "kg2_to_kg1": ranking_metrics(backward)}


class _ServedForms(NamedTuple):
    """Every KG1 and every KG2 entity row, and the served ranking's score forms of the test
    sources against KG2 (forward) and of the test targets against KG1 (backward)."""

    rows1: torch.Tensor
    rows2: torch.Tensor
    forward: ScoreForm
    backward: ScoreForm


def _one_pass_ranks(unit: UnitRows, pairs: torch.Tensor,
                    forms: dict[str, tuple[ScoreForm, ScoreForm]],
                    served: _ServedForms | None = None, *, block: int = 1024,
                    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]],
                               tuple[torch.Tensor, torch.Tensor] | None]:
    """Exact gold ranks of ``pairs`` (rows ``[P, 2]``, pair i's target is the gold of its
    source and the other way round) for each ranking's (KG1→KG2, KG2→KG1) score forms among
    the pairs, and with ``served`` among every entity of the other KG.

    One pass over the test sources × the keys (the pairs' targets, or with ``served`` every
    KG2 entity) counts everything: a ``[P, block]`` block of cosines ranks its keys for every
    source, and its test-target columns rank the sources for those targets. The served
    ranking's KG2→KG1 direction then only scores the KG1 entities outside the test, so both
    served directions cost about two thirds of a search each way. Ties, within float32
    rounding, count against the gold; an infinite row bias (a collapsed entity) ties every key
    and ranks the gold last.
    """
    sources, targets = unit(pairs[:, 0]), unit(pairs[:, 1])
    gold_cos = (sources * targets).sum(dim=1)
    golds = {m: (_tolerant(f, gold_cos, f.col_bias), _tolerant(b, gold_cos, b.col_bias))
             for m, (f, b) in forms.items()}
    ahead = {m: (torch.zeros(len(pairs), dtype=torch.long),
                 torch.zeros(len(pairs), dtype=torch.long)) for m in forms}
    keys = pairs[:, 1] if served is None else served.rows2
    gold_key = _positions(keys, pairs[:, 1], "KG2 target")
    pair_of_key = torch.full((len(keys),), -1, dtype=torch.long)
    pair_of_key[gold_key] = torch.arange(len(pairs))
    if served is not None:
        served_ahead = (torch.zeros(len(pairs), dtype=torch.long),
                        torch.zeros(len(pairs), dtype=torch.long))
        gold_key1 = _positions(served.rows1, pairs[:, 0], "KG1 source")
        sources_bias = _gather(served.backward.col_bias, gold_key1)  # sources as KG1 keys
        served_gold = (_tolerant(served.forward, gold_cos,
                                 _gather(served.forward.col_bias, gold_key)),
                       _tolerant(served.backward, gold_cos, sources_bias))
    for lo in range(0, len(keys), block):
        hi = min(lo + block, len(keys))
        cos = sources @ unit(keys[lo:hi]).T  # [P, hi - lo]
        in_block = pair_of_key[lo:hi]
        at = torch.nonzero(in_block >= 0).squeeze(1)  # the block's test targets
        here = in_block[at]  # their pairs
        among = cos if len(at) == hi - lo else cos[:, at]  # [P, len(at)]
        by_target = among.T.contiguous()  # its rows are read tile by tile, as cos's are
        row_max, target_max = among.amax(dim=1), by_target.amax(dim=1)
        own = torch.arange(len(at))
        for method, (forward, backward) in forms.items():
            gold_f, gold_b = golds[method]
            _count_ahead(ahead[method][0], among, row_max, forward.scale,
                         _gather(forward.col_bias, here), gold_f, own_rows=here, own_cols=own)
            counts = torch.zeros(len(at), dtype=torch.long)
            _count_ahead(counts, by_target, target_max, backward.scale, backward.col_bias,
                         gold_b[here], own_rows=own, own_cols=here)
            ahead[method][1][here] += counts
        if served is not None:
            forward = served.forward
            _count_ahead(served_ahead[0], cos, cos.amax(dim=1), forward.scale,
                         None if forward.col_bias is None else forward.col_bias[lo:hi],
                         served_gold[0], own_rows=here, own_cols=at)
            counts = torch.zeros(len(at), dtype=torch.long)
            _count_ahead(counts, by_target, target_max, served.backward.scale, sources_bias,
                         served_gold[1][here], own_rows=own, own_cols=here)
            served_ahead[1][here] += counts
    ranks = {method: (forward + 1, backward + 1) for method, (forward, backward) in ahead.items()}
    if served is None:
        return ranks, None
    _count_outside_the_test(served_ahead[1], targets, unit, served, pairs, served_gold[1],
                            block=block)
    return ranks, (_collapsed_last(served_ahead[0] + 1, served.forward, len(served.rows2)),
                   _collapsed_last(served_ahead[1] + 1, served.backward, len(served.rows1)))


def _count_outside_the_test(ahead: torch.Tensor, targets: torch.Tensor, unit: UnitRows,
                            served: _ServedForms, pairs: torch.Tensor, gold: torch.Tensor, *,
                            block: int) -> None:
    """Add to ``ahead`` the KG1 entities outside the test's sources that score at least each
    test target's ``gold`` source in the served ranking."""
    outside = torch.isin(served.rows1, pairs[:, 0], invert=True)
    others, bias = served.rows1[outside], _gather(served.backward.col_bias, outside)
    none = torch.empty(0, dtype=torch.long)
    for lo in range(0, len(others), block):
        hi = min(lo + block, len(others))
        cos = targets @ unit(others[lo:hi]).T  # [P, hi - lo]
        _count_ahead(ahead, cos, cos.amax(dim=1), served.backward.scale,
                     None if bias is None else bias[lo:hi], gold, own_rows=none, own_cols=none)


def _count_ahead(ahead: torch.Tensor, cos: torch.Tensor, row_max: torch.Tensor, scale: float,
                 bias: torch.Tensor | None, gold: torch.Tensor, *, own_rows: torch.Tensor,
                 own_cols: torch.Tensor) -> None:
    """Add to ``ahead`` (per query row of the cosine block ``cos``) the keys of the block
    scoring ``scale * cos + bias`` at least the query's ``gold``, leaving out each query's own
    gold key: row ``own_rows[i]``'s gold is column ``own_cols[i]``.

    Only rows whose best possible score (``row_max``, the row's largest cosine) reaches the
    gold are counted one by one: with a good ranking, few are.
    """
    bound = scale * row_max + (0.0 if bias is None else bias.max())
    busy = torch.nonzero(bound >= gold).squeeze(1)
    if len(busy) == 0:
        return
    ahead[busy] += count_at_least(cos, busy, gold[busy], scale=scale, bias=bias)
    if len(own_rows) == 0:
        return
    own_scores = scale * cos[own_rows, own_cols]
    if bias is not None:
        own_scores += bias[own_cols]
    ahead[own_rows] -= (own_scores >= gold[own_rows]).long()


def _tolerant(form: ScoreForm, gold_cos: torch.Tensor,
              gold_bias: torch.Tensor | None) -> torch.Tensor:
    """A ranking's score of each pair (the row bias left out: it shifts a whole row) from the
    pair's cosine and its gold key's column bias, lowered by float32 rounding error so that a
    key tying with the gold counts against it whichever way its sum was rounded (as in
    ``model.similarity.streaming_gold_ranks``)."""
    gold = form.scale * gold_cos
    if gold_bias is not None:
        gold = gold + gold_bias
    return gold - TIE_TOLERANCE * (abs(form.scale) + gold.abs())


def _pair_forms(unit: UnitRows, pairs: torch.Tensor, method: Similarity, k: int, reg: float,
                iterations: int, pools: tuple[torch.Tensor, torch.Tensor] | None,
                candidates: int, plan: RankingTerms | None = None,
                ) -> tuple[ScoreForm, ScoreForm]:
    """The score forms of both directions of ``method`` among the pairs."""
    if method == "cosine":
        return score_form("cosine"), score_form("cosine")
    if method == "csls":
        if plan is not None and plan.lists is not None and pools is not None:
            r1, r2 = _csls_within_pools(unit, pairs, pools, plan, k)
        else:
            terms = ranking_terms(unit(pairs[:, 0]), unit(pairs[:, 1]), k=k, candidates=k,
                                  unit=True)
            r1, r2 = terms.r_source, terms.r_target
        return score_form("csls", r1, r2), score_form("csls", r2, r1)
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


@dataclass(frozen=True)
class ServedTerms:
    """What the service ranks by: ``kgs [N]`` (1 or 2 per entity), the checkpoint's headline
    ranking and its stored per-entity terms (``model.ranking.serving_terms``)."""

    kgs: torch.Tensor
    ranking: Ranking
    csls_r: torch.Tensor | None
    potential: torch.Tensor | None
    reg: float | None


def _csls_within_pools(unit: UnitRows, pairs: torch.Tensor,
                       pools: tuple[torch.Tensor, torch.Tensor], plan: RankingTerms,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSLS r of the pairs' sources among their targets and the other way round, read from
    the lists the pools' plan kept (the pairs are in the pools): no search of their own, but
    for the rare entity whose list holds fewer than ``k`` of the pairs."""
    rows = _positions(pools[0], pairs[:, 0], "source")
    cols = _positions(pools[1], pairs[:, 1], "target")
    (r1, unknown1), (r2, unknown2) = plan.csls_means_within(rows, cols, k)
    sources, targets = pairs[:, 0], pairs[:, 1]
    for r, unknown, queries, keys in ((r1, unknown1, sources, targets),
                                      (r2, unknown2, targets, sources)):
        if unknown.any():
            (scores, _), _ = two_way_topk(unit(queries[unknown]), unit(keys), k)
            r[unknown] = csls_means(scores, k)
    return r1, r2


def all_targets_metrics(embeddings: torch.Tensor, pairs: torch.Tensor,
                        served: ServedTerms) -> dict[str, object]:
    """Metrics of ``pairs`` with every entity of the other KG as a candidate, ranked with the
    per-entity terms a checkpoint stores for the service: the figures of what
    ``GET /candidates`` answers."""
    _, ranks = _one_pass_ranks(_unit_rows(embeddings), pairs, {},
                               _served_forms(served, pairs))
    assert ranks is not None
    return served_record(served.ranking, ranks)


def served_record(ranking: Ranking,
                  ranks: tuple[torch.Tensor, torch.Tensor]) -> dict[str, object]:
    """The ``all_targets`` metrics of served ranks (KG1→KG2, KG2→KG1) under ``ranking``."""
    return {"ranking": ranking, **direction_metrics(ranks)}


def _served_forms(served: ServedTerms, pairs: torch.Tensor) -> _ServedForms:
    """The served ranking's score forms of ``pairs`` against every entity of the other KG
    (NonFiniteError where a stored term is NaN: it would rank nothing ahead of the gold)."""
    r, potential = served.csls_r, served.potential
    for name, terms in (("csls_r", r), ("potential", potential)):
        if terms is not None and torch.isnan(terms).any():
            raise NonFiniteError(f"the stored ranking terms {name} hold NaN")
    rows1, rows2 = (torch.nonzero(served.kgs == kg).squeeze(1) for kg in (1, 2))
    forward, backward = (
        score_form(served.ranking, _gather(r, queries), _gather(r, keys),
                   _gather(potential, keys), served.reg)
        for queries, keys in ((pairs[:, 0], rows2), (pairs[:, 1], rows1)))
    return _ServedForms(rows1, rows2, forward, backward)


def _gather(values: torch.Tensor | None, at: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values[at]


def _collapsed_last(ranks: torch.Tensor, form: ScoreForm, keys: int) -> torch.Tensor:
    """An infinite row bias ties a query with every key: its gold ranks last."""
    if form.row_bias is None:
        return ranks
    return torch.where(torch.isinf(form.row_bias), keys, ranks)


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
