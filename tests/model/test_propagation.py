"""Seed-label propagation (model/propagation.py)."""

from __future__ import annotations

import pytest
import torch

from model.propagation import propagate_seed_labels, with_propagation


def _typed_graph(triples: torch.Tensor, num_relations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both directions of every (head, relation, tail), inverses as their own types."""
    head, relation, tail = triples.T
    edge_index = torch.stack([torch.cat([head, tail]), torch.cat([tail, head])])
    return edge_index, torch.cat([relation, relation + num_relations])


def _isomorphic_pair(n: int = 120, relations: int = 6, triples: int = 400,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """A random KG and a relabelled copy (entities permuted, other relation ids) in one graph;
    returns edge_index, edge_type, number of entities and the gold pairs ``[n, 2]``."""
    g = torch.Generator().manual_seed(seed)
    kg1 = torch.stack([torch.randint(n, (triples,), generator=g),
                       torch.randint(relations, (triples,), generator=g),
                       torch.randint(n, (triples,), generator=g)], dim=1)
    kg1 = kg1[kg1[:, 0] != kg1[:, 2]]
    entity = n + torch.randperm(n, generator=g)  # KG1 entity i is KG2 entity entity[i]
    relation = relations + torch.randperm(relations, generator=g)
    kg2 = torch.stack([entity[kg1[:, 0]], relation[kg1[:, 1]], entity[kg1[:, 2]]], dim=1)
    kg2 = kg2[torch.randperm(len(kg2), generator=g)]
    edge_index, edge_type = _typed_graph(torch.cat([kg1, kg2]), 2 * relations)
    gold = torch.stack([torch.arange(n), entity], dim=1)
    return edge_index, edge_type, 2 * n, gold


def test_counterparts_in_isomorphic_graphs_get_identical_labels() -> None:
    """Nothing depends on entity or relation ids, so an entity and its counterpart in a
    relabelled copy of the graph end up with the same labels, whatever the seeds."""
    edge_index, edge_type, n, gold = _isomorphic_pair()
    seeds = gold[torch.randperm(len(gold), generator=torch.Generator().manual_seed(1))[:30]]
    labels = propagate_seed_labels(edge_index, edge_type, n, seeds, dim=32, hops=2)
    torch.testing.assert_close(labels[gold[:, 0]], labels[gold[:, 1]], atol=1e-5, rtol=1e-4)
    reached = labels[gold[:, 0]].norm(dim=1) > 0
    assert reached.float().mean() > 0.9
    # and they tell entities apart: most counterparts are each other's nearest neighbour
    sim = labels[gold[reached, 0]] @ labels[gold[reached, 1]].T
    hits1 = (sim.argmax(dim=1) == torch.arange(len(sim))).float().mean()
    assert hits1 > 0.8


def test_shape_norms_and_unreached_entities() -> None:
    # 0 - 1 - 2 in one component; 3 - 4 in another, by a relation no seed has: nothing
    # reaches it (a relation shared with the seeds' component would, through the roles)
    edge_index, edge_type = _typed_graph(torch.tensor([[0, 0, 1], [1, 0, 2], [3, 1, 4]]), 2)
    labels = propagate_seed_labels(edge_index, edge_type, 5, torch.tensor([[0, 2]]), dim=8,
                                   hops=3)
    assert labels.shape == (5, 2 * 3 * 8)
    norms = labels.norm(dim=1)
    torch.testing.assert_close(norms[:3], torch.ones(3))
    assert torch.equal(labels[3:], torch.zeros(2, 48))
    assert torch.isfinite(labels).all()


def test_same_seed_same_labels_other_seed_other_labels() -> None:
    edge_index, edge_type, n, gold = _isomorphic_pair()
    seeds = gold[:20]
    first, again = (propagate_seed_labels(edge_index, edge_type, n, seeds, dim=16, seed=3)
                    for _ in range(2))
    other = propagate_seed_labels(edge_index, edge_type, n, seeds, dim=16, seed=4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_more_seeds_align_more_entities() -> None:
    edge_index, edge_type, n, gold = _isomorphic_pair(relations=3, triples=300)
    # break the isomorphism a little: KG2 loses a tenth of its edges
    kg2_edge = edge_index[0] >= n // 2
    drop = kg2_edge & (torch.rand(len(edge_type), generator=torch.Generator().manual_seed(5)) < 0.1)
    edge_index, edge_type = edge_index[:, ~drop], edge_type[~drop]

    def hits1(count: int) -> float:
        labels = propagate_seed_labels(edge_index, edge_type, n, gold[:count], dim=64)
        test = gold[count:]
        sim = labels[test[:, 0]] @ labels[test[:, 1]].T
        return float((sim.argmax(dim=1) == torch.arange(len(test))).float().mean())

    assert hits1(60) > hits1(10)


def test_with_propagation_appends_weighted_labels() -> None:
    joint = torch.randn(4, 3) * 5
    labels = torch.nn.functional.normalize(torch.randn(4, 2), dim=1)
    assert with_propagation(joint, None, 0.5) is joint
    combined = with_propagation(joint, labels, 0.5)
    assert combined.shape == (4, 5)
    torch.testing.assert_close(combined[:, :3].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(combined[:, 3:], 0.5 * labels)


@pytest.mark.parametrize("kwargs", [{"hops": 0}, {"dim": 0}])
def test_rejects_empty_propagation(kwargs: dict[str, int]) -> None:
    edge_index, edge_type = _typed_graph(torch.tensor([[0, 0, 1]]), 1)
    with pytest.raises(ValueError, match="must be positive"):
        propagate_seed_labels(edge_index, edge_type, 2, torch.tensor([[0, 1]]), **kwargs)
