"""The three rankings of MIMEA over two sets of entities, as per-entity terms.

Every ranking scores a source s and a target t of the other KG as
``scale * cos(s, t) + row_bias[s] + col_bias[t]``:

- cosine: scale 1, no bias;
- CSLS: scale 2, biases ``-r`` (each entity's mean cosine to its k nearest of the other side);
- Sinkhorn: scale ``2 / reg``, column bias ``log v[t] - r[t] / reg`` (KG2 targets) or
  ``log u[t] - r[t] / reg`` (KG1 targets), where ``u, v`` scale the entropic one-to-one plan
  whose gain is CSLS / reg and whose support is the union of both sides' top-K candidates.

The terms come from candidate searches and a sparse plan (``model/similarity.py``), so no
``[N1, N2]`` matrix ever exists. Training, evaluation and the service all rank through
:func:`ranking_terms` and :func:`score_form`, so what is evaluated is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch

from mimea.model.similarity import (
    FLAT_MAX_KEYS,
    candidate_edges,
    csls_means,
    csls_scores,
    normalise,
    sparse_sinkhorn,
    topk_candidates,
    two_way_topk,
)

if TYPE_CHECKING:  # model.config reads RANKINGS from here
    from mimea.model.config import EvalConfig

Ranking = Literal["cosine", "csls", "sinkhorn"]
RANKINGS: tuple[Ranking, ...] = ("cosine", "csls", "sinkhorn")
TopLists = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RankingTerms:
    """Per-entity terms of the rankings between sources ``[n1]`` and targets ``[n2]``.

    ``edges [E, 2]`` (source, target positions) is the candidate support with each edge's
    cosine ``edge_cos [E]``; ``log_u``/``log_v`` are the plan's log scalings (``None`` when no
    plan was asked for); ``lists``, when kept, the searches' top lists ``((scores [n1, K],
    ids [n1, K]), (scores [n2, K], ids [n2, K]))``, best first.
    """

    r_source: torch.Tensor
    r_target: torch.Tensor
    edges: torch.Tensor
    edge_cos: torch.Tensor
    reg: float | None = None
    log_u: torch.Tensor | None = None
    log_v: torch.Tensor | None = None
    lists: TopLists | None = None

    def csls_means_within(self, sources: torch.Tensor, targets: torch.Tensor, k: int,
                          ) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                     tuple[torch.Tensor, torch.Tensor]]:
        """CSLS r of the ``sources`` among the ``targets`` only and the other way round
        (positions, among this search's sources and targets), read from the kept lists.

        Returns ``((r [S], unknown [S]), (r [T], unknown [T]))``: a row is unknown where its
        list, cut short of every key, holds fewer than ``k`` of the other subset (its r needs
        a search of its own). The lists are best first and every key left out scores at most
        their last, so the first ``k`` members of a list are the subset's ``k`` best.
        """
        if self.lists is None:
            raise ValueError("these ranking terms were computed without keeping their lists")
        (scores_12, ids_12), (scores_21, ids_21) = self.lists
        wanted_2 = torch.zeros(len(self.r_target), dtype=torch.bool)
        wanted_2[targets] = True
        wanted_1 = torch.zeros(len(self.r_source), dtype=torch.bool)
        wanted_1[sources] = True
        return (_means_within(scores_12[sources], ids_12[sources], wanted_2, k),
                _means_within(scores_21[targets], ids_21[targets], wanted_1, k))

    def edge_csls(self) -> torch.Tensor:
        """CSLS ``[E]`` of every candidate edge."""
        return csls_scores(self.edge_cos, self.r_source[self.edges[:, 0]],
                           self.r_target[self.edges[:, 1]])

    def edge_log_plan(self) -> torch.Tensor:
        """Log plan mass ``[E]`` of every candidate edge (needs the plan)."""
        if self.log_u is None or self.log_v is None or self.reg is None:
            raise ValueError("these ranking terms were computed without a Sinkhorn plan")
        return (self.log_u[self.edges[:, 0]] + self.log_v[self.edges[:, 1]]
                + self.edge_csls() / self.reg)


def _means_within(scores: torch.Tensor, ids: torch.Tensor, wanted: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean of its first ``k`` listed keys that are ``wanted`` (bool over keys),
    and whether the row's list, shorter than the keys, lists fewer than ``k`` of them."""
    inside = wanted[ids] & torch.isfinite(scores)
    top = scores.masked_fill(~inside, -torch.inf).topk(min(k, scores.shape[1]), dim=1).values
    complete = scores.shape[1] >= len(wanted)
    unknown = (inside.sum(dim=1) < k) & (not complete)
    return csls_means(top, k), unknown


def ranking_terms(source: torch.Tensor, target: torch.Tensor, *, k: int, candidates: int,
                  reg: float | None = None, iterations: int = 20, use_gpu: bool = False,
                  unit: bool = False, keep_lists: bool = False) -> RankingTerms:
    """CSLS terms (and with ``reg`` the Sinkhorn plan) between ``source [n1, d]`` and
    ``target [n2, d]`` (normalised here, unless ``unit`` says their rows are at unit norm
    already: at 100k entities per KG each normalised copy is a gigabyte or two).

    One top-``max(candidates, k)`` search each way gives the candidate support and, from its
    first ``k`` columns, each entity's r; the plan lives on the support only. ``keep_lists``
    keeps the searches' lists on the terms (see :meth:`RankingTerms.csls_means_within`).
    """
    if not unit:
        source, target = normalise(source.float()), normalise(target.float())
    width = max(candidates, k)
    if use_gpu or max(len(source), len(target)) > FLAT_MAX_KEYS:
        scores_12, ids_12 = topk_candidates(source, target, width, use_gpu=use_gpu)
        scores_21, ids_21 = topk_candidates(target, source, width, use_gpu=use_gpu)
    else:  # exact: one pass gives both directions
        (scores_12, ids_12), (scores_21, ids_21) = two_way_topk(source, target, width)
    r_source, r_target = csls_means(scores_12, k), csls_means(scores_21, k)
    edges, edge_cos = candidate_edges(ids_12, scores_12, ids_21, scores_21, len(source),
                                      len(target))
    lists = ((scores_12, ids_12), (scores_21, ids_21)) if keep_lists else None
    terms = RankingTerms(r_source=r_source, r_target=r_target, edges=edges, edge_cos=edge_cos,
                         lists=lists)
    if reg is None:
        return terms
    log_u, log_v = sparse_sinkhorn(edges, terms.edge_csls(), len(source), len(target), reg=reg,
                                   iterations=iterations)
    return replace(terms, reg=reg, log_u=log_u, log_v=log_v)


def pool_plan(embedding: torch.Tensor, pools: tuple[torch.Tensor, torch.Tensor],
              settings: EvalConfig, *, keep_lists: bool = False) -> RankingTerms:
    """The Sinkhorn plan of ``settings`` between the pools ``(KG1 rows, KG2 rows)`` of
    ``embedding [N, d]``, as the test's Sinkhorn ranking and the alignment decoder take it
    (``keep_lists``: see :func:`ranking_terms`).

    Normalising the gathered rows gives the rows of the whole embedding normalised (the
    evaluation's), so a plan computed for the evaluation serves the decoder bit for bit.
    """
    rows1, rows2 = pools
    return ranking_terms(normalise(embedding[rows1].float()), normalise(embedding[rows2].float()),
                         k=settings.csls_k, candidates=settings.candidates,
                         reg=settings.sinkhorn_reg, iterations=settings.sinkhorn_iterations,
                         unit=True, keep_lists=keep_lists)


@dataclass(frozen=True)
class ScoreForm:
    """``scale * cos(s, t) + row_bias[s] + col_bias[t]`` (biases ``None`` when zero)."""

    scale: float
    row_bias: torch.Tensor | None
    col_bias: torch.Tensor | None


def score_form(ranking: Ranking, r_query: torch.Tensor | None = None,
               r_key: torch.Tensor | None = None, log_key: torch.Tensor | None = None,
               reg: float | None = None) -> ScoreForm:
    """The score of ``ranking`` for queries with CSLS terms ``r_query`` against keys with
    ``r_key`` and, for the Sinkhorn ranking, plan potentials ``log_key`` (entropy ``reg``).

    The Sinkhorn ranking drops the query's own terms (``r_query / reg + log u``): they shift a
    whole row and change no ranking.
    """
    if ranking == "cosine":
        return ScoreForm(1.0, None, None)
    if r_query is None or r_key is None:
        raise ValueError(f"the {ranking} ranking needs the CSLS terms of queries and keys")
    if ranking == "csls":
        return ScoreForm(2.0, -r_query, -r_key)
    if ranking == "sinkhorn":
        if log_key is None or reg is None:
            raise ValueError("the sinkhorn ranking needs the plan's potentials and entropy")
        return ScoreForm(2.0 / reg, None, log_key - r_key / reg)
    raise ValueError(f"unknown ranking {ranking!r}; use 'cosine', 'csls' or 'sinkhorn'")


def serving_terms(joint: torch.Tensor, kgs: torch.Tensor, *, k: int, candidates: int,
                  reg: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranking terms a checkpoint stores for the service: ``(csls_r [N], potential [N])``
    over every entity (``kgs [N]`` holds 1 or 2), KG1 against KG2.

    ``potential`` is ``log u`` on KG1 rows and ``log v`` on KG2 rows of the plan over both
    whole KGs: the plan a deployed aligner can take, seeds included. A source s of either KG
    then ranks a target t of the other by ``score_form("sinkhorn", ..., log_key=potential[t])``.
    """
    rows1 = torch.nonzero(kgs == 1).squeeze(1)
    rows2 = torch.nonzero(kgs == 2).squeeze(1)
    # Each side gathered and normalised in one go: no un-normalised copy outlives its
    # normalisation while the search runs.
    terms = ranking_terms(normalise(joint[rows1].float()), normalise(joint[rows2].float()), k=k,
                          candidates=candidates, reg=reg, iterations=iterations, unit=True)
    assert terms.log_u is not None and terms.log_v is not None
    r = joint.new_zeros(len(joint))
    potential = joint.new_zeros(len(joint))
    r[rows1], r[rows2] = terms.r_source, terms.r_target
    potential[rows1], potential[rows2] = terms.log_u, terms.log_v
    return r, potential
