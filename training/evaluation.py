"""Similarity and ranking metrics: pure functions shared by training, evaluation and benches.

Alignment is evaluated the standard way: each test source entity is ranked against every test
target entity (and the reverse for the KG2→KG1 direction). The Sinkhorn ranking takes its
potentials from a one-to-one plan over pools of entities (every unlabelled entity of both KGs
for the test), so it never learns which entities the test pairs are.
"""

from __future__ import annotations

from typing import Literal

import ot
import torch
import torch.nn.functional as F

from model.finite import require_finite

Similarity = Literal["cosine", "csls", "sinkhorn"]
CHUNK = 4096


def cosine_matrix(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[len(source), len(target)]``."""
    return F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).T


def mean_topk_similarity(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each row's k largest values (the CSLS hubness term r)."""
    k = min(k, sim.shape[1])
    return sim.topk(k, dim=1).values.mean(dim=1)


def csls_matrix(source: torch.Tensor, target: torch.Tensor, k: int = 10) -> torch.Tensor:
    r"""Cross-domain similarity local scaling.

    .. math:: \mathrm{CSLS}(x, y) = 2\cos(x, y) - r_T(x) - r_S(y)

    where :math:`r_T(x)` is the mean cosine of x to its k nearest targets and :math:`r_S(y)`
    the mean cosine of y to its k nearest sources; it penalises hubs.
    """
    sim = cosine_matrix(source, target)
    r_source = mean_topk_similarity(sim, k)
    r_target = mean_topk_similarity(sim.T, k)
    return 2 * sim - r_source[:, None] - r_target[None, :]


def sinkhorn_matrix(source: torch.Tensor, target: torch.Tensor, k: int = 10, *,
                    reg: float = 0.001, iterations: int = 20) -> torch.Tensor:
    r"""Log of the entropic optimal-transport plan between sources and targets, CSLS as gain.

    .. math::
        \log P = \log u \mathbf{1}^\top + \mathbf{1} \log v^\top + \mathrm{CSLS} / \varepsilon

    with uniform marginals (POT's log-domain Sinkhorn, ``iterations`` rounds). Ranking by the
    plan decodes all sources jointly under a one-to-one assumption: a target that is the best
    match of another source loses mass, which CSLS only approximates with its hubness term.
    Over the test pairs alone that assumption holds exactly, so the test is ranked with a
    plan over every unlabelled entity instead (:func:`pooled_sinkhorn_matrix`). ``[S, T]``
    memory several times over.
    """
    return sinkhorn_log_plan(csls_matrix(source, target, k), reg=reg, iterations=iterations)


def sinkhorn_log_plan(scores: torch.Tensor, *, reg: float = 0.001,
                      iterations: int = 20) -> torch.Tensor:
    """Log of the entropic OT plan with uniform marginals and ``scores`` ``[S, T]`` as gain
    (see :func:`sinkhorn_matrix`), for callers that hold the scores already."""
    log_u, log_v = sinkhorn_potentials(scores, reg=reg, iterations=iterations)
    return log_u[:, None] + log_v[None, :] + scores / reg


def sinkhorn_potentials(scores: torch.Tensor, *, reg: float = 0.001,
                        iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The plan's log scalings ``(log u [S], log v [T])``: :math:`\log P_{st} = \log u_s +
    \log v_t + \mathrm{scores}_{st} / \varepsilon`.

    A row ranks its targets by ``scores / reg + log v``: ``log v`` is a per-target hubness
    penalty, which CSLS's :math:`r_S` approximates from k neighbours.
    """
    a = scores.new_full((scores.shape[0],), 1.0 / scores.shape[0])
    b = scores.new_full((scores.shape[1],), 1.0 / scores.shape[1])
    _, log = ot.bregman.sinkhorn_log(a, b, -scores, reg, numItermax=iterations, stopThr=0.0,
                                     log=True, warn=False)
    return log["log_u"], log["log_v"]


def pooled_sinkhorn_matrix(embeddings: torch.Tensor, pairs: torch.Tensor,
                           pools: tuple[torch.Tensor, torch.Tensor], k: int = 10, *,
                           reg: float = 0.001, iterations: int = 20) -> torch.Tensor:
    """Log of the Sinkhorn plan over ``pools`` (KG1 rows, KG2 rows), CSLS as gain, at the
    sources and targets of ``pairs`` ``[P, 2]``: ``[P, P]``, the gold on the diagonal.

    The plan decodes every pooled entity jointly, so its potentials carry the one-to-one
    evidence of entities the pairs do not name. With the unlabelled entities as pools, that
    evidence is what a deployed aligner holds too; it does not assume that the test sources
    and targets match each other one to one, as a plan over the test pairs alone would.
    """
    sources, targets = pools
    rows = _positions(sources, pairs[:, 0], "source")
    cols = _positions(targets, pairs[:, 1], "target")
    scores = csls_matrix(embeddings[sources], embeddings[targets], k)
    log_u, log_v = sinkhorn_potentials(scores, reg=reg, iterations=iterations)
    return log_u[rows, None] + log_v[None, cols] + scores[rows][:, cols] / reg


def _positions(pool: torch.Tensor, rows: torch.Tensor, role: str) -> torch.Tensor:
    """Index of each of ``rows`` in ``pool`` (ValueError for a row the pool lacks)."""
    order = pool.argsort()
    found = torch.searchsorted(pool[order], rows.contiguous()).clamp(max=len(pool) - 1)
    at = order[found]
    missing = pool[at] != rows
    if missing.any():
        raise ValueError(f"{int(missing.sum())} pair {role}s are not in the Sinkhorn pool, "
                         f"e.g. entity row {int(rows[missing][0])}")
    return at


def similarity_matrix(source: torch.Tensor, target: torch.Tensor, method: Similarity = "csls",
                      k: int = 10, *, sinkhorn_reg: float = 0.001,
                      sinkhorn_iterations: int = 20) -> torch.Tensor:
    if method == "csls":
        return csls_matrix(source, target, k)
    if method == "cosine":
        return cosine_matrix(source, target)
    if method == "sinkhorn":
        return sinkhorn_matrix(source, target, k, reg=sinkhorn_reg,
                               iterations=sinkhorn_iterations)
    raise ValueError(f"unknown similarity {method!r}; use 'cosine', 'csls' or 'sinkhorn'")


def gold_ranks(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of the diagonal entry in each row; ties count against the gold.

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
                   ) -> dict[str, dict[str, float]]:
    """Metrics of ``pairs`` (rows ``[P, 2]``) in both directions, ranked among the pairs.

    ``pools`` (KG1 rows, KG2 rows, holding every pair's entities) is where the Sinkhorn
    ranking's plan is taken (:func:`pooled_sinkhorn_matrix`); without them, over the pairs.
    Returns ``{"kg1_to_kg2": {...}, "kg2_to_kg1": {...}}``; KG1→KG2 is the headline.
    """
    require_finite(embeddings, "the joint embedding")
    with torch.no_grad():
        if method == "sinkhorn" and pools is not None:
            sim = pooled_sinkhorn_matrix(embeddings, pairs, pools, k, reg=sinkhorn_reg,
                                         iterations=sinkhorn_iterations)
        else:
            sim = similarity_matrix(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], method, k,
                                    sinkhorn_reg=sinkhorn_reg,
                                    sinkhorn_iterations=sinkhorn_iterations)
        return {"kg1_to_kg2": ranking_metrics(gold_ranks(sim)),
                "kg2_to_kg1": ranking_metrics(gold_ranks(sim.T.contiguous()))}


def validation_hits1(embeddings: torch.Tensor, pairs: torch.Tensor, distractors: torch.Tensor,
                     *, k: int = 10) -> float:
    """CSLS Hits@1, KG1→KG2, of ``pairs`` ranked against their targets *and* ``distractors``.

    Among a few hundred validation targets alone nearly every model looks good; with every
    unlabelled KG2 entity as a distractor, the epoch that validates best is the one that ranks
    best among the test's thousands of candidates.
    """
    return pooled_metrics(embeddings, pairs, distractors, k=k)["hits1"]


def pooled_metrics(embeddings: torch.Tensor, pairs: torch.Tensor,
                   target_distractors: torch.Tensor,
                   source_distractors: torch.Tensor | None = None, *,
                   k: int = 10, method: Literal["csls", "sinkhorn"] = "csls",
                   sinkhorn_reg: float = 0.001, sinkhorn_iterations: int = 20,
                   ) -> dict[str, float]:
    """CSLS (or Sinkhorn) metrics, KG1→KG2, of ``pairs`` ranked against their targets and
    ``target_distractors``, the targets' hubness terms (or the plan) taken over the pairs'
    sources and ``source_distractors``.

    With every unlabelled entity of both KGs in the pools, a few hundred validation pairs are
    ranked as the test pairs are, hubness terms and plan included: the setting in which to
    choose ``eval.csls_k`` and ``eval.sinkhorn_reg``.
    """
    require_finite(embeddings, "the joint embedding")
    if source_distractors is None:
        source_distractors = pairs.new_empty(0)
    with torch.no_grad():
        sources = torch.cat([pairs[:, 0], source_distractors])
        targets = torch.cat([pairs[:, 1], target_distractors])
        sim = similarity_matrix(embeddings[sources], embeddings[targets], "csls", k)
        if method == "sinkhorn":
            sim = sinkhorn_log_plan(sim, reg=sinkhorn_reg, iterations=sinkhorn_iterations)
        return ranking_metrics(gold_ranks(sim[:len(pairs)]))


def mutual_nearest_pairs(embeddings: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor,
                         *, method: Similarity = "csls", k: int = 10,
                         agree_with_sinkhorn: bool = False, sinkhorn_reg: float = 0.001,
                         sinkhorn_iterations: int = 20) -> torch.Tensor:
    """Pairs ``[Q, 2]`` (entity rows) that are each other's nearest neighbour.

    With ``agree_with_sinkhorn``, only the pairs that are also mutual nearest neighbours of the
    Sinkhorn plan over the same scores: a one-to-one decoding of every candidate at once must
    pick them too.
    """
    require_finite(embeddings, "the joint embedding")
    with torch.no_grad():
        sim = similarity_matrix(embeddings[sources], embeddings[targets], method, k,
                                sinkhorn_reg=sinkhorn_reg, sinkhorn_iterations=sinkhorn_iterations)
        mutual, best_target = _mutual_rows(sim)
        if agree_with_sinkhorn:
            plan = sinkhorn_log_plan(sim, reg=sinkhorn_reg, iterations=sinkhorn_iterations)
            plan_mutual, plan_target = _mutual_rows(plan)
            mutual &= plan_mutual & (plan_target == best_target)
        return torch.stack([sources[mutual], targets[best_target[mutual]]], dim=1)


def _mutual_rows(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool ``[S]``: the row's best column prefers it back, ``[S]``: each row's best column)."""
    best_target = sim.argmax(dim=1)
    best_source = sim.argmax(dim=0)
    rows = torch.arange(sim.shape[0], device=sim.device)
    return best_source[best_target] == rows, best_target
