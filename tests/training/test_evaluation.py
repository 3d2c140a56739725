"""Similarity and ranking metrics (training/evaluation.py)."""

from __future__ import annotations

from dataclasses import replace

import ot
import pytest
import torch
import torch.nn.functional as F

from mimea.model.finite import NonFiniteError
from mimea.model.ranking import ranking_terms, score_form
from mimea.model.similarity import streaming_gold_ranks
from mimea.training import evaluation
from mimea.training.evaluation import (
    ServedTerms,
    all_targets_metrics,
    evaluate_pairs,
    gold_ranks,
    mutual_plan_pairs,
    pooled_metrics,
    rank_pairs,
    ranking_metrics,
    validation_metrics,
)

# Dense references: what the scalable code must reproduce where its candidate lists are
# complete (every test input here is smaller than the default 50 candidates).


def cosine_matrix(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).T


def csls_matrix(source: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    sim = cosine_matrix(source, target)
    r_source = sim.topk(min(k, sim.shape[1]), dim=1).values.mean(dim=1)
    r_target = sim.T.topk(min(k, sim.shape[0]), dim=1).values.mean(dim=1)
    return 2 * sim - r_source[:, None] - r_target[None, :]


def sinkhorn_log_plan(scores: torch.Tensor, reg: float = 0.001,
                      iterations: int = 20) -> torch.Tensor:
    a = scores.new_full((scores.shape[0],), 1.0 / scores.shape[0])
    b = scores.new_full((scores.shape[1],), 1.0 / scores.shape[1])
    _, log = ot.bregman.sinkhorn_log(a, b, -scores, reg, numItermax=iterations, stopThr=0.0,
                                     log=True, warn=False)
    return log["log_u"][:, None] + log["log_v"][None, :] + scores / reg


def sinkhorn_matrix(source: torch.Tensor, target: torch.Tensor, k: int, *, reg: float = 0.001,
                    iterations: int = 20) -> torch.Tensor:
    return sinkhorn_log_plan(csls_matrix(source, target, k), reg, iterations)


def similarity_matrix(source: torch.Tensor, target: torch.Tensor, method: str,
                      k: int) -> torch.Tensor:
    return {"cosine": lambda: cosine_matrix(source, target),
            "csls": lambda: csls_matrix(source, target, k),
            "sinkhorn": lambda: sinkhorn_matrix(source, target, k)}[method]()


def pooled_sinkhorn_matrix(embeddings: torch.Tensor, pairs: torch.Tensor,
                           pools: tuple[torch.Tensor, torch.Tensor], k: int, *,
                           reg: float = 0.001, iterations: int = 20) -> torch.Tensor:
    plan = sinkhorn_matrix(embeddings[pools[0]], embeddings[pools[1]], k, reg=reg,
                           iterations=iterations)
    rows = [pools[0].tolist().index(r) for r in pairs[:, 0].tolist()]
    cols = [pools[1].tolist().index(c) for c in pairs[:, 1].tolist()]
    return plan[rows][:, cols]


def _brute_ranks(sim: torch.Tensor) -> list[int]:
    return [1 + sum(1 for j in range(sim.shape[1]) if j != i and sim[i, j] >= sim[i, i])
            for i in range(sim.shape[0])]


@pytest.mark.parametrize("n", [1, 5, 30])
def test_identity_is_perfect(n: int) -> None:
    metrics = ranking_metrics(gold_ranks(torch.eye(n)))
    assert metrics == {"hits1": 1.0, "hits10": 1.0, "mrr": 1.0, "mr": 1.0}


def test_known_ranks() -> None:
    # gold (diagonal) ranks 1, 2, 3, 4 and 12
    sim = torch.zeros(5, 12)
    sim[0, 0] = 1.0
    sim[1, 1], sim[1, 3] = 0.5, 0.9
    sim[2, 2], sim[2, :2] = 0.5, 0.7
    sim[3, 3], sim[3, 4:7] = 0.5, 0.8
    sim[4, 4], sim[4, 5:] = -1.0, 0.0
    sim[4, :4] = 0.0
    ranks = gold_ranks(sim)
    assert ranks.tolist() == [1, 2, 3, 4, 12]
    metrics = ranking_metrics(ranks)
    assert metrics["hits1"] == pytest.approx(0.2)
    assert metrics["hits10"] == pytest.approx(0.8)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 12) / 5)
    assert metrics["mr"] == pytest.approx(22 / 5)


def test_permutation_of_identity() -> None:
    perm = torch.tensor([2, 0, 1, 3])
    sim = torch.eye(4)[perm] + 0.5 * torch.eye(4)  # row i: best column perm[i], then its gold
    assert gold_ranks(sim).tolist() == [2, 2, 2, 1]
    assert ranking_metrics(gold_ranks(sim))["hits1"] == pytest.approx(0.25)


@pytest.mark.parametrize("n", [2, 6])
def test_ties_count_against_the_gold(n: int) -> None:
    # A collapsed embedding scores every pair alike: each gold ties with every column.
    assert gold_ranks(torch.ones(n, n)).tolist() == [n] * n
    sim = torch.eye(n)
    sim[:, 0] = 1.0  # a hub ties with every gold: it ranks them second, row 0's first
    assert gold_ranks(sim).tolist() == [1] + [2] * (n - 1)


def test_gold_ranks_match_brute_force_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluation, "CHUNK", 3)
    sim = torch.randn(10, 14, generator=torch.Generator().manual_seed(0))
    assert gold_ranks(sim).tolist() == _brute_ranks(sim)


@pytest.mark.parametrize("hits", [(1,), (1, 5, 10)])
def test_ranking_metrics_keys(hits: tuple[int, ...]) -> None:
    metrics = ranking_metrics(torch.tensor([1, 3, 7]), hits=hits)
    assert set(metrics) == {*(f"hits{k}" for k in hits), "mrr", "mr"}


def _unit(degrees: list[float]) -> torch.Tensor:
    angles = torch.tensor(degrees) * torch.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_csls_demotes_a_hub() -> None:
    # target 0 (18°) is a hub: source 2 sits on it, and it is source 1's (38°) cosine nearest
    # neighbour; CSLS lets source 1 pick target 1 (60°) instead.
    source, target = _unit([0.0, 38.0, 18.0]), _unit([18.0, 60.0])
    assert cosine_matrix(source, target)[1].argmax() == 0
    assert csls_matrix(source, target, k=1)[1].argmax() == 1


def test_sinkhorn_gives_a_contested_target_to_one_source() -> None:
    # Both sources' CSLS-best target is target 0 (12°); source 1 (20°) is nearer to it, but the
    # one-to-one plan gives target 0 to source 0 and target 1 (60°) to source 1, the assignment
    # with the larger total CSLS.
    source, target = _unit([0.0, 20.0]), _unit([12.0, 60.0])
    csls = csls_matrix(source, target, k=1)
    assert csls.argmax(dim=1).tolist() == [0, 0]
    plan = sinkhorn_matrix(source, target, k=1, reg=0.01, iterations=200)
    assert plan.argmax(dim=1).tolist() == [0, 1]


@pytest.mark.parametrize("method", ["cosine", "csls", "sinkhorn"])
def test_evaluate_pairs_returns_both_directions(method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(20, 4, generator=gen)
    pairs = torch.stack([torch.arange(0, 8), torch.arange(19, 11, -1)], dim=1)
    result = evaluate_pairs(embeddings, pairs, method=method, k=3)
    assert set(result) == {"kg1_to_kg2", "kg2_to_kg1"}
    sim = similarity_matrix(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], method, 3)
    assert result["kg1_to_kg2"] == ranking_metrics(torch.tensor(_brute_ranks(sim)))
    assert result["kg2_to_kg1"] == ranking_metrics(torch.tensor(_brute_ranks(sim.T)))
    assert result["kg1_to_kg2"] != result["kg2_to_kg1"]


def test_evaluate_pairs_perfect_alignment() -> None:
    gen = torch.Generator().manual_seed(2)
    kg1 = torch.randn(10, 6, generator=gen)
    embeddings = torch.cat([kg1, kg1 + 0.01 * torch.randn(10, 6, generator=gen)])
    pairs = torch.stack([torch.arange(10), torch.arange(10, 20)], dim=1)
    for direction in evaluate_pairs(embeddings, pairs).values():
        assert direction == {"hits1": 1.0, "hits10": 1.0, "mrr": 1.0, "mr": 1.0}


def test_mutual_plan_pairs_returns_entity_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(5, 8, generator=gen)
    embeddings = torch.cat([torch.randn(3, 8, generator=gen), base, base[[2, 0, 4, 1, 3]]])
    sources, targets = torch.arange(3, 8), torch.arange(8, 13)
    pairs = mutual_plan_pairs(embeddings, sources, targets, k=2, sinkhorn_reg=0.05)
    expected = {(3 + i, 8 + j) for j, i in enumerate([2, 0, 4, 1, 3])}
    assert set(map(tuple, pairs.tolist())) == expected
    assert pairs.shape == (5, 2)


def test_mutual_plan_pairs_are_one_to_one() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, 8, generator=gen)
    embeddings = torch.cat([base, base + 0.9 * torch.randn(40, 8, generator=gen)])
    pairs = mutual_plan_pairs(embeddings, torch.arange(40), torch.arange(40, 80), k=3,
                              sinkhorn_reg=0.01)
    assert 0 < len(pairs) <= 40
    assert len(set(pairs[:, 0].tolist())) == len(set(pairs[:, 1].tolist())) == len(pairs)


def test_validation_distractors_make_ranking_harder() -> None:
    # Two pairs, each gold target close to its source; a distractor closer than one gold.
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0],      # sources
                        [0.9, 0.1], [0.1, 0.9],      # gold targets
                        [0.05, 1.0], [-1.0, 0.0]])   # distractors
    pairs = torch.tensor([[0, 2], [1, 3]])
    assert validation_metrics(emb, pairs, torch.empty(0, dtype=torch.long), k=1)["hits1"] == 1.0
    assert validation_metrics(emb, pairs, torch.tensor([5]), k=1)["hits1"] == 1.0
    assert validation_metrics(emb, pairs, torch.tensor([4, 5]), k=1)["hits1"] == pytest.approx(0.5)


def test_pooled_metrics_take_the_hubness_terms_over_the_source_pool() -> None:
    # A wrong target a little closer to the source than the gold one wins by CSLS among the
    # pair alone; once another source sits right on it (a hub of the pool), it loses.
    emb = torch.tensor([[1.0, 0.0],      # source
                        [0.8, 0.6],      # its gold target (cosine 0.80)
                        [0.85, -0.53],   # a wrong target (cosine 0.85)
                        [0.85, -0.53]])  # another source, on the wrong target
    pairs, wrong, other = torch.tensor([[0, 1]]), torch.tensor([2]), torch.tensor([3])
    assert pooled_metrics(emb, pairs, wrong, k=1)["hits1"] == 0.0
    assert validation_metrics(emb, pairs, wrong, k=1)["hits1"] == 0.0
    pooled = pooled_metrics(emb, pairs, wrong, other, k=1)
    assert pooled["hits1"] == 1.0 and pooled["mr"] == 1.0


def test_pooled_sinkhorn_names_an_entity_outside_the_pool() -> None:
    embeddings = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"1 pair targets are not in the pool ranked "
                                         r"against, e\.g\. entity row 5"):
        evaluate_pairs(embeddings, torch.tensor([[0, 4], [1, 5]]), method="sinkhorn",
                       pools=(torch.tensor([0, 1]), torch.tensor([3, 4])))


def test_evaluate_pairs_uses_the_pools_for_the_sinkhorn_ranking_only() -> None:
    gen = torch.Generator().manual_seed(6)
    embeddings = torch.randn(30, 5, generator=gen)
    pairs = torch.stack([torch.arange(0, 10), torch.arange(15, 25)], dim=1)
    pools = (torch.arange(0, 15), torch.arange(15, 30))
    for method in ("cosine", "csls"):
        assert evaluate_pairs(embeddings, pairs, method=method, k=2, pools=pools) == \
            evaluate_pairs(embeddings, pairs, method=method, k=2)
    sim = pooled_sinkhorn_matrix(embeddings, pairs, pools, k=2)
    assert evaluate_pairs(embeddings, pairs, method="sinkhorn", k=2, pools=pools) == \
        {"kg1_to_kg2": ranking_metrics(torch.tensor(_brute_ranks(sim))),
         "kg2_to_kg1": ranking_metrics(torch.tensor(_brute_ranks(sim.T)))}


def test_pooled_metrics_sinkhorn_ranks_by_the_plan_over_the_pools() -> None:
    gen = torch.Generator().manual_seed(8)
    embeddings = torch.randn(30, 5, generator=gen)
    pairs = torch.stack([torch.arange(0, 6), torch.arange(15, 21)], dim=1)
    sources, targets = torch.arange(6, 15), torch.arange(21, 30)
    metrics = pooled_metrics(embeddings, pairs, targets, sources, k=2, method="sinkhorn",
                             sinkhorn_reg=0.05, sinkhorn_iterations=30)
    plan = sinkhorn_matrix(embeddings[torch.cat([pairs[:, 0], sources])],
                           embeddings[torch.cat([pairs[:, 1], targets])], 2, reg=0.05,
                           iterations=30)
    assert metrics == ranking_metrics(torch.tensor(_brute_ranks(plan[:6])))
    assert metrics != pooled_metrics(embeddings, pairs, targets, sources, k=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise_instead_of_ranking_first(bad: float) -> None:
    sim = torch.eye(6)
    sim[3, 1] = bad
    with pytest.raises(NonFiniteError, match=r"rows 0\.\.5"):
        gold_ranks(sim)


@pytest.mark.parametrize("method", ["cosine", "csls", "sinkhorn"])
def test_nan_embedding_is_refused_by_every_ranking(method: str) -> None:
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    emb[2, 1] = float("nan")
    pairs = torch.tensor([[0, 4], [1, 5], [2, 6], [3, 7]])
    with pytest.raises(NonFiniteError, match=r"joint embedding holds NaN \(first at row 2"):
        evaluate_pairs(emb, pairs, method=method, k=2)
    with pytest.raises(NonFiniteError):
        pooled_metrics(emb, pairs, torch.empty(0, dtype=torch.long), k=2)
    with pytest.raises(NonFiniteError):
        mutual_plan_pairs(emb, pairs[:, 0], pairs[:, 1], k=2)


def test_collapsed_embedding_ranks_last_not_first() -> None:
    emb = torch.ones(10, 3)
    pairs = torch.stack([torch.arange(5), torch.arange(5, 10)], dim=1)
    metrics = evaluate_pairs(emb, pairs, method="cosine")["kg1_to_kg2"]
    assert metrics["hits1"] == 0.0 and metrics["mr"] == 5.0


def test_no_pairs_is_an_error_not_nan() -> None:
    with pytest.raises(ValueError, match="no pairs"):
        ranking_metrics(torch.empty(0, dtype=torch.long))


@pytest.mark.parametrize("ranking", ["cosine", "csls", "sinkhorn"])
def test_all_targets_ranks_among_every_entity_of_the_other_kg(ranking: str) -> None:
    gen = torch.Generator().manual_seed(9)
    emb = torch.randn(26, 6, generator=gen)
    kgs = torch.tensor([1] * 12 + [2] * 14)
    pairs = torch.stack([torch.arange(0, 8), torch.arange(12, 20)], dim=1)
    csls_r = torch.rand(26, generator=gen)
    potential = -5 * torch.rand(26, generator=gen)
    metrics = all_targets_metrics(emb, pairs, ServedTerms(kgs, ranking, csls_r, potential, 0.05))
    cos = cosine_matrix(emb, emb)
    for direction, (q, keys, g) in {
            "kg1_to_kg2": (pairs[:, 0], torch.arange(12, 26), pairs[:, 1] - 12),
            "kg2_to_kg1": (pairs[:, 1], torch.arange(0, 12), pairs[:, 0])}.items():
        score = {"cosine": cos[q][:, keys],
                 "csls": 2 * cos[q][:, keys] - csls_r[q][:, None] - csls_r[keys][None, :],
                 "sinkhorn": (2 * cos[q][:, keys] - csls_r[q][:, None] - csls_r[keys][None, :])
                 / 0.05 + potential[keys][None, :]}[ranking]
        gold = score.gather(1, g[:, None])
        ranks = (score >= gold).sum(dim=1)
        assert metrics[direction] == pytest.approx(ranking_metrics(ranks))
    assert metrics["ranking"] == ranking


@pytest.mark.parametrize("ranking", ["cosine", "csls", "sinkhorn"])
def test_served_ranks_come_with_the_pair_ranks_and_match_a_search_each_way(ranking: str) -> None:
    # KGs interleaved, test pairs in shuffled order, duplicated rows (exact ties), targets
    # without plan mass, and blocks smaller than either side: the pass that ranks the pairs
    # among themselves must leave those ranks as they are, and give each direction's served
    # ranks as a search of every key of the other KG does.
    gen = torch.Generator().manual_seed(12)
    emb = torch.randn(70, 5, generator=gen)
    emb[40] = emb[41] = emb[2]
    kgs = torch.tensor([1, 2] * 35)
    kgs[40], kgs[41] = 2, 1
    rows1, rows2 = torch.nonzero(kgs == 1).squeeze(1), torch.nonzero(kgs == 2).squeeze(1)
    sources, targets = rows1[rows1 != 2], rows2[rows2 != 40]
    pairs = torch.stack([sources[torch.randperm(34, generator=gen)[:20]],
                         targets[torch.randperm(34, generator=gen)[:20]]], dim=1)
    pairs[0] = torch.tensor([2, 40])
    csls_r = torch.rand(70, generator=gen)
    potential = -5 * torch.rand(70, generator=gen)
    potential[rows2[:3]] = -torch.inf
    served = ServedTerms(kgs, ranking, csls_r, potential, 0.05)
    options = {"k": 2, "sinkhorn_reg": 0.05, "pools": (rows1, rows2), "candidates": 8}
    alone = rank_pairs(emb, pairs, **options)
    with_served = rank_pairs(emb, pairs, served=served, **options)
    assert with_served.keys() == {*alone, "all_targets"}
    unit = evaluation._unit_rows(emb)
    forms = {m: evaluation._pair_forms(unit, pairs, m, 2, 0.05, 20, (rows1, rows2), 8)
             for m in alone}
    z = F.normalize(emb, dim=1)
    expected = []
    for queries, keys, golds in ((pairs[:, 0], rows2, pairs[:, 1]),
                                 (pairs[:, 1], rows1, pairs[:, 0])):
        form = score_form(ranking, csls_r[queries], csls_r[keys], potential[keys], 0.05)
        expected.append(streaming_gold_ranks(
            z[queries], torch.searchsorted(keys, golds), z[keys], scale=form.scale,
            row_bias=form.row_bias, col_bias=form.col_bias))
    for block in (4, 1024):
        ranks, all_targets = evaluation._one_pass_ranks(
            unit, pairs, forms, evaluation._served_forms(served, pairs), block=block)
        for method, both in alone.items():
            for got in (ranks[method], with_served[method]):
                assert all(torch.equal(a, b) for a, b in zip(got, both, strict=True))
        for got in (all_targets, with_served["all_targets"]):
            assert got is not None
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    backward = expected[1]
    assert backward[0] >= 2  # row 41, a KG1 copy of the gold source, ties with it


def test_served_ranks_refuse_nan_terms() -> None:
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    kgs = torch.tensor([1] * 4 + [2] * 4)
    pairs = torch.tensor([[0, 4], [1, 5]])
    potential = torch.zeros(8)
    potential[6] = float("nan")
    with pytest.raises(NonFiniteError, match="potential hold NaN"):
        all_targets_metrics(emb, pairs, ServedTerms(kgs, "sinkhorn", torch.zeros(8), potential,
                                                    0.05))


@pytest.mark.parametrize("candidates", [4, 40])
def test_pair_csls_terms_read_from_the_pools_lists_match_their_own_search(
        candidates: int) -> None:
    # Pools of 40 + 40 holding 25 pairs: with 4 candidates some lists hold fewer than k = 3
    # pair entities and need a search of their own; with 40 every list is complete.
    gen = torch.Generator().manual_seed(13)
    emb = torch.randn(80, 6, generator=gen)
    pools = (torch.arange(0, 40), torch.arange(40, 80))
    pairs = torch.stack([torch.randperm(40, generator=gen)[:25],
                         40 + torch.randperm(40, generator=gen)[:25]], dim=1)
    unit = evaluation._unit_rows(emb)
    plan = ranking_terms(unit(pools[0]), unit(pools[1]), k=3, candidates=candidates,
                         reg=0.05, unit=True, keep_lists=True)
    rows = evaluation._positions(pools[0], pairs[:, 0], "source")
    cols = evaluation._positions(pools[1], pairs[:, 1], "target")
    (_, unknown1), (_, unknown2) = plan.csls_means_within(rows, cols, 3)
    assert bool(unknown1.any() or unknown2.any()) == (candidates == 4)
    r1, r2 = evaluation._csls_within_pools(unit, pairs, pools, plan, 3)
    own = ranking_terms(unit(pairs[:, 0]), unit(pairs[:, 1]), k=3, candidates=3, unit=True)
    torch.testing.assert_close(r1, own.r_source)
    torch.testing.assert_close(r2, own.r_target)
    with pytest.raises(ValueError, match="without keeping"):
        replace(plan, lists=None).csls_means_within(rows, cols, 3)


def test_sparse_plan_keeps_the_planted_pairs_where_candidate_lists_are_short() -> None:
    # 300 + 300 entities, 5 candidates each way: the plan's support is a small share of the
    # pairs, yet it must rank noisy copies as well as the complete one does.
    gen = torch.Generator().manual_seed(10)
    kg1 = torch.randn(300, 16, generator=gen)
    emb = torch.cat([kg1, kg1 + 0.3 * torch.randn(300, 16, generator=gen)])
    pairs = torch.stack([torch.arange(0, 100), torch.arange(300, 400)], dim=1)
    pools = (torch.arange(0, 300), torch.arange(300, 600))
    short = evaluate_pairs(emb, pairs, method="sinkhorn", k=3, sinkhorn_reg=0.02, pools=pools,
                           candidates=5)["kg1_to_kg2"]
    full = evaluate_pairs(emb, pairs, method="sinkhorn", k=3, sinkhorn_reg=0.02, pools=pools,
                          candidates=300)["kg1_to_kg2"]
    assert short["hits1"] >= full["hits1"] - 0.02 and short["hits1"] > 0.9


def test_one_pass_ranks_every_ranking_both_ways_across_blocks() -> None:
    gen = torch.Generator().manual_seed(11)
    embeddings = torch.randn(40, 6, generator=gen)
    pairs = torch.stack([torch.arange(0, 17), torch.arange(39, 22, -1)], dim=1)
    pools = (torch.arange(0, 20), torch.arange(20, 40))
    z = torch.nn.functional.normalize(embeddings, dim=1)
    forms = {m: evaluation._pair_forms(lambda rows: z[rows], pairs, m, 2, 0.05, 30, pools, 50)
             for m in ("cosine", "csls", "sinkhorn")}
    ranks, _ = evaluation._one_pass_ranks(lambda rows: z[rows], pairs, forms, block=5)
    for method in ("cosine", "csls"):
        sim = similarity_matrix(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], method, 2)
        assert ranks[method][0].tolist() == _brute_ranks(sim)
        assert ranks[method][1].tolist() == _brute_ranks(sim.T)
    plan = pooled_sinkhorn_matrix(embeddings, pairs, pools, 2, reg=0.05, iterations=30)
    assert ranks["sinkhorn"][0].tolist() == _brute_ranks(plan)
    assert ranks["sinkhorn"][1].tolist() == _brute_ranks(plan.T)
    together = evaluation.evaluate_rankings(embeddings, pairs, k=2, sinkhorn_reg=0.05,
                                            sinkhorn_iterations=30, pools=pools)
    for method in ("cosine", "csls", "sinkhorn"):
        assert together[method] == evaluate_pairs(embeddings, pairs, method=method, k=2,
                                                  sinkhorn_reg=0.05, sinkhorn_iterations=30,
                                                  pools=pools)
