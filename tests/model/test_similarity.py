"""Scalable similarity search and decoding (model/similarity.py) against dense references."""

from __future__ import annotations

import math

import ot
import pytest
import torch
import torch.nn.functional as F

from mimea.model.similarity import (
    augmented_keys,
    augmented_query,
    build_ip_index,
    candidate_edges,
    candidate_pairs,
    csls_means,
    csls_scores,
    edge_cosine,
    ivf_lists,
    normalise,
    segment_logsumexp,
    sinkhorn_bias,
    sparse_sinkhorn,
    streaming_gold_ranks,
    topk_candidates,
    two_way_topk,
)


def _vectors(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return normalise(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def _planted(n: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered keys and queries that are noisy copies of the first ``n // 2`` keys."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n // 50, d, generator=gen)
    keys = normalise(centres[torch.randint(len(centres), (n,), generator=gen)]
                     + 0.7 * torch.randn(n, d, generator=gen))
    queries = normalise(keys[:n // 2] + noise * torch.randn(n // 2, d, generator=gen) / d**0.5)
    return queries, keys


def _dense_ranks(sim: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``sim[i, gold[i]]`` in row i, as ``training.evaluation.gold_ranks``."""
    return (sim > sim.gather(1, gold[:, None])).sum(dim=1) + 1


def _dense_potentials(scores: torch.Tensor, reg: float,
                      iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    n1, n2 = scores.shape
    a = scores.new_full((n1,), 1.0 / n1)
    b = scores.new_full((n2,), 1.0 / n2)
    _, log = ot.bregman.sinkhorn_log(a, b, -scores, reg, numItermax=iterations, stopThr=0.0,
                                     log=True, warn=False)
    return log["log_u"], log["log_v"]


def _complete(n1: int, n2: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(n1), torch.arange(n2))


def test_flat_search_is_exact_top_k_across_query_blocks() -> None:
    queries, keys = _vectors(70, seed=1), _vectors(300, seed=2)
    scores, ids = topk_candidates(queries, keys, 5, block=16, index="flat")
    dense = torch.topk(queries @ keys.T, 5, dim=1)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert torch.equal(ids, dense.indices)
    torch.testing.assert_close(scores, dense.values)


def test_ivf_recalls_planted_neighbours() -> None:
    queries, keys = _planted(8000, 32, noise=0.5, seed=3)
    flat = topk_candidates(queries, keys, 10, index="flat")[1]
    ivf = topk_candidates(queries, keys, 10, index="ivf", nprobe=16, block=1000)[1]
    assert build_ip_index(keys, index="ivf").index.nlist == ivf_lists(8000) == 8000 // 39
    assert ivf_lists(1_000_000) == 4000
    planted = torch.arange(len(queries))[:, None]
    assert (flat[:, :1] == planted).float().mean() > 0.99
    assert (ivf == planted).any(dim=1).float().mean() > 0.97
    overlap = (ivf[:, :, None] == flat[:, None, :]).any(dim=2).float().mean()
    assert overlap > 0.9


def test_k_beyond_the_keys_is_clamped_and_unknown_index_rejected() -> None:
    scores, ids = topk_candidates(_vectors(4), _vectors(3, seed=1), 10)
    assert ids.shape == (4, 3)
    assert torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="unknown index"):
        topk_candidates(_vectors(4), _vectors(3), 2, index="hnsw")  # type: ignore[arg-type]


def test_csls_from_candidates_matches_dense_csls() -> None:
    x, y = _vectors(40, seed=4), _vectors(50, seed=5)
    s12, ids12 = topk_candidates(x, y, 8)
    s21, ids21 = topk_candidates(y, x, 8)
    r1, r2 = csls_means(s12, 3), csls_means(s21, 3)
    cos = x @ y.T
    expected = 2 * cos - cos.topk(3, 1).values.mean(1)[:, None] - cos.topk(3, 0).values.mean(0)
    torch.testing.assert_close(csls_scores(cos, r1, r2), expected)
    edges = candidate_pairs(ids12, ids21, 40, 50)
    per_edge = csls_scores(edge_cosine(x, y, edges, block=7), r1[edges[:, 0]], r2[edges[:, 1]])
    torch.testing.assert_close(per_edge, expected[edges[:, 0], edges[:, 1]])


def test_csls_means_skips_missing_candidates() -> None:
    scores = torch.tensor([[0.9, 0.5, -math.inf], [-math.inf, -math.inf, -math.inf]])
    torch.testing.assert_close(csls_means(scores, 3), torch.tensor([0.7, 0.0]))


def test_candidate_pairs_union_is_deduplicated_and_sorted() -> None:
    ids_12 = torch.tensor([[2, 0], [1, -1]])  # KG1 row 1 found one candidate only
    ids_21 = torch.tensor([[0, 1], [1, 0], [0, 0]])
    edges = candidate_pairs(ids_12, ids_21, 2, 3)
    expected = {(0, 2), (0, 0), (1, 1), (1, 0), (0, 1)}
    assert {tuple(e) for e in edges.tolist()} == expected
    assert len(edges) == len(expected)
    keys = edges[:, 0] * 3 + edges[:, 1]
    assert torch.equal(keys, keys.sort().values)
    with pytest.raises(ValueError, match="expected 3 and 3"):
        candidate_pairs(ids_12, ids_21, 3, 3)


def test_candidate_edges_carry_the_search_scores() -> None:
    x, y = _vectors(30, seed=6), _vectors(45, seed=7)
    s12, ids12 = topk_candidates(x, y, 6)
    s21, ids21 = topk_candidates(y, x, 6)
    edges, scores = candidate_edges(ids12, s12, ids21, s21, 30, 45)
    assert torch.equal(edges, candidate_pairs(ids12, ids21, 30, 45))
    torch.testing.assert_close(scores, edge_cosine(x, y, edges))


@pytest.mark.parametrize(("n1", "n2"), [(6, 6), (7, 13), (19, 5), (40, 31)])
@pytest.mark.parametrize("reg", [0.02, 0.05, 0.1])
def test_sparse_sinkhorn_on_complete_support_is_pots(n1: int, n2: int, reg: float) -> None:
    gen = torch.Generator().manual_seed(n1 * n2)
    scores = torch.rand(n1, n2, generator=gen, dtype=torch.float64) * 2 - 1
    expected_u, expected_v = _dense_potentials(scores, reg, 20)
    order = torch.randperm(n1 * n2, generator=gen)  # edge order must not matter
    edges = _complete(n1, n2)[order]
    log_u, log_v = sparse_sinkhorn(edges, scores.flatten()[order], n1, n2, reg=reg,
                                   iterations=20)
    torch.testing.assert_close(log_u, expected_u, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_v, expected_v, atol=1e-9, rtol=0)


def test_sparse_sinkhorn_float32_stays_close_to_pot() -> None:
    x, y = _vectors(60, seed=8), _vectors(45, seed=9)
    cos = x @ y.T
    scores = csls_scores(cos, cos.topk(3, 1).values.mean(1), cos.topk(3, 0).values.mean(0))
    expected_u, expected_v = _dense_potentials(scores.double(), 0.02, 20)
    log_u, log_v = sparse_sinkhorn(_complete(60, 45), scores.flatten(), 60, 45, reg=0.02,
                                   iterations=20)
    torch.testing.assert_close(log_u.double(), expected_u, atol=1e-3, rtol=0)
    torch.testing.assert_close(log_v.double(), expected_v, atol=1e-3, rtol=0)


@pytest.mark.parametrize(("n1", "n2"), [(30, 30), (40, 20)])
def test_sparse_sinkhorn_on_partial_support_meets_the_marginals(n1: int, n2: int) -> None:
    gen = torch.Generator().manual_seed(n1 + n2)
    # every source reaches target (row mod n2): a plan with uniform marginals exists
    planted = torch.stack([torch.arange(n1), torch.arange(n1) % n2], dim=1)
    noise = torch.stack([torch.randint(n1, (3 * n1,), generator=gen),
                         torch.randint(n2, (3 * n1,), generator=gen)], dim=1)
    edges = candidate_pairs(*_lists(torch.cat([planted, noise]), n1, n2), n1, n2)
    assert len(edges) < n1 * n2
    scores = torch.rand(len(edges), generator=gen, dtype=torch.float64)
    log_u, log_v = sparse_sinkhorn(edges, scores, n1, n2, reg=0.1, iterations=500)
    plan = (log_u[edges[:, 0]] + log_v[edges[:, 1]] + scores / 0.1).exp()
    rows = torch.zeros(n1, dtype=plan.dtype).index_add_(0, edges[:, 0], plan)
    cols = torch.zeros(n2, dtype=plan.dtype).index_add_(0, edges[:, 1], plan)
    torch.testing.assert_close(rows, torch.full_like(rows, 1 / n1), atol=1e-12, rtol=1e-9)
    # rows are exact after each u step; columns converge slowly where the support forces
    # some edges' mass towards 0 (sublinearly: 2e-3 after 500 iterations, 5e-4 after 2000)
    torch.testing.assert_close(cols, torch.full_like(cols, 1 / n2), atol=0, rtol=5e-3)


def _lists(edges: torch.Tensor, n1: int, n2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges as KG1→KG2 lists (one edge per row, -1 padded) and empty KG2→KG1 lists."""
    ids_12 = torch.full((n1, len(edges)), -1)
    ids_12[edges[:, 0], torch.arange(len(edges))] = edges[:, 1]
    return ids_12, torch.full((n2, 1), -1)


def test_sparse_sinkhorn_gives_unreached_rows_minus_inf() -> None:
    edges = torch.tensor([[0, 0], [0, 1], [2, 1]])  # source 1 and target 2 have no edge
    log_u, log_v = sparse_sinkhorn(edges, torch.tensor([0.5, 0.1, 0.3]), 3, 3, reg=0.05,
                                   iterations=10)
    assert torch.isneginf(log_u[1]) and torch.isneginf(log_v[2])
    assert torch.isfinite(log_u[[0, 2]]).all() and torch.isfinite(log_v[:2]).all()
    with pytest.raises(ValueError, match="NaN"):
        sparse_sinkhorn(edges, torch.tensor([0.5, math.nan, 0.3]), 3, 3, reg=0.05,
                        iterations=10)


def test_segment_logsumexp_is_stable() -> None:
    values = torch.tensor([1000.0, 1000.0, -5.0])
    out = segment_logsumexp(values, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(out[[0, 2]], torch.tensor([1000.0 + math.log(2), -5.0]))
    assert torch.isneginf(out[1])


def test_augmented_search_serves_the_sinkhorn_ranking() -> None:
    reg = 0.02
    x, y = _vectors(50, d=12, seed=10), _vectors(80, d=12, seed=11)
    cos = x @ y.T
    r1, r2 = cos.topk(3, 1).values.mean(1), cos.topk(3, 0).values.mean(0)
    csls = csls_scores(cos, r1, r2)
    log_v = sparse_sinkhorn(_complete(50, 80), csls.flatten(), 50, 80, reg=reg,
                            iterations=20)[1]
    dense = torch.topk(csls / reg + log_v[None, :], 10, dim=1)
    keys = augmented_keys(y, sinkhorn_bias(log_v, r2, reg))
    scores, ids = topk_candidates(augmented_query(x), keys, 10, index="flat")
    assert keys.shape == (80, 13)
    assert torch.equal(ids, dense.indices)
    torch.testing.assert_close(2 / reg * scores - r1[:, None] / reg, dense.values, atol=1e-3,
                               rtol=1e-5)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_streaming_ranks_equal_dense_ranks(block: int) -> None:
    reg = 0.05
    x, y = _vectors(37, seed=12), _vectors(90, seed=13)
    cos = x @ y.T
    r1, r2 = cos.topk(3, 1).values.mean(1), cos.topk(3, 0).values.mean(0)
    log_v = torch.randn(90, generator=torch.Generator().manual_seed(0))
    gold = torch.randint(90, (37,), generator=torch.Generator().manual_seed(1))
    csls = csls_scores(cos, r1, r2)
    cases = [({}, cos),
             ({"scale": 2.0, "row_bias": -r1, "col_bias": -r2}, csls),
             ({"scale": 2 / reg, "row_bias": -r1 / reg, "col_bias": log_v - r2 / reg},
              csls / reg + log_v)]
    for terms, dense in cases:
        ranks = streaming_gold_ranks(x, gold, y, block=block, **terms)
        assert torch.equal(ranks, _dense_ranks(dense, gold))
        assert ranks.min() >= 1 and ranks.max() <= 90


def test_streaming_ranks_count_ties_against_the_gold() -> None:
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ranks = streaming_gold_ranks(queries, torch.tensor([1, 2]), keys, block=2)
    assert ranks.tolist() == [3, 1]
    col_bias = torch.tensor([0.0, -math.inf, -math.inf, 0.0])
    ranks = streaming_gold_ranks(queries, torch.tensor([1, 0]), keys, col_bias=col_bias)
    assert ranks.tolist() == [4, 2]
    row_bias = torch.tensor([0.0, -math.inf])  # a source without mass ties every key
    assert streaming_gold_ranks(queries, torch.tensor([1, 2]), keys,
                                row_bias=row_bias).tolist() == [3, 4]


def test_streaming_ranks_reject_nan() -> None:
    x, y = _vectors(5, seed=14), _vectors(9, seed=15)
    gold = torch.arange(5)
    y_nan = y.clone()
    y_nan[7, 0] = math.nan  # not a gold: caught in its block
    with pytest.raises(ValueError, match="NaN in the scores"):
        streaming_gold_ranks(x, gold, y_nan, block=4)
    col_bias = torch.zeros(9)
    col_bias[8] = math.nan
    with pytest.raises(ValueError, match="NaN in the scores"):
        streaming_gold_ranks(x, gold, y, col_bias=col_bias, block=3)
    with pytest.raises(ValueError, match="NaN in the gold"):
        streaming_gold_ranks(x, gold, y, col_bias=torch.full((9,), math.nan))
    with pytest.raises(ValueError, match="NaN in the gold"):
        streaming_gold_ranks(x, gold, y, row_bias=torch.tensor([0, 0, math.nan, 0, 0]))


def test_two_way_topk_keeps_the_best_of_crowded_targets() -> None:
    """Targets that hundreds of later sources beat at once (a hub, sources sorted worst first)
    still get exactly their k best, merged over blocks and tiles."""
    gen = torch.Generator().manual_seed(3)
    target = F.normalize(torch.randn(30, 16, generator=gen), dim=-1)
    source = F.normalize(target[torch.randint(3, (600,), generator=gen)]
                         + 0.3 * torch.randn(600, 16, generator=gen), dim=-1)
    source = source[(source @ target[0]).argsort()]  # each block beats target 0's list again
    (_, _), (s21, i21) = two_way_topk(source, target, 9, block=32, tile=8)
    top21 = (source @ target.T).T.topk(9, dim=1)
    torch.testing.assert_close(s21, top21.values)
    assert torch.equal(i21, top21.indices)


@pytest.mark.parametrize(("n1", "n2", "k", "block", "tile"),
                         [(37, 53, 5, 8, 16), (37, 53, 5, 8, 1000), (20, 9, 12, 64, 4),
                          (5, 5, 5, 2, 2)])
def test_two_way_topk_equals_both_flat_searches(n1: int, n2: int, k: int, block: int,
                                                tile: int) -> None:
    source, target = _vectors(n1, seed=1), _vectors(n2, seed=2)
    (s12, i12), (s21, i21) = two_way_topk(source, target, k, block=block, tile=tile)
    sim = source @ target.T
    top12 = sim.topk(min(k, n2), dim=1)
    top21 = sim.T.topk(min(k, n1), dim=1)
    torch.testing.assert_close(s12, top12.values)
    torch.testing.assert_close(s21, top21.values)
    assert torch.equal(i12, top12.indices) and torch.equal(i21, top21.indices)
