"""Seed-label propagation (model/propagation.py)."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import coalesce

import mimea.model.propagation
from mimea.model.propagation import label_width, propagate_seed_labels, with_propagation


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


def test_coalesce_deduplicates_edges_as_unique_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyG's coalesce gives the distinct edges in torch.unique(dim=1)'s order, so the labels
    are bit for bit those that the slower torch.unique gave."""
    edge_index, edge_type, n, gold = _isomorphic_pair()
    edges = torch.cat([edge_index, edge_index[:, ::3]], dim=1).flip(0)  # duplicates included
    assert torch.equal(coalesce(edges, num_nodes=n), torch.unique(edges, dim=1))
    empty = torch.empty(2, 0, dtype=torch.long)
    assert torch.equal(coalesce(empty, num_nodes=n), torch.unique(empty, dim=1))

    labels = propagate_seed_labels(edge_index, edge_type, n, gold[:40], dim=16)
    monkeypatch.setattr(mimea.model.propagation, "coalesce",
                        lambda index, num_nodes: torch.unique(index, dim=1))
    assert torch.equal(propagate_seed_labels(edge_index, edge_type, n, gold[:40], dim=16),
                       labels)


def test_shape_norms_and_unreached_entities() -> None:
    # 0 - 1 - 2 in one component; 3 - 4 in another, by a relation no seed has: nothing
    # reaches it (a relation shared with the seeds' component would, through the roles)
    edge_index, edge_type = _typed_graph(torch.tensor([[0, 0, 1], [1, 0, 2], [3, 1, 4]]), 2)
    labels = propagate_seed_labels(edge_index, edge_type, 5, torch.tensor([[0, 2]]), dim=8,
                                   hops=3)
    assert labels.shape == (5, 4 * 3 * 8) == (5, label_width(8, 3, directed=True))
    norms = labels.norm(dim=1)
    torch.testing.assert_close(norms[:3], torch.ones(3))
    assert torch.equal(labels[3:], torch.zeros(2, 96))
    undirected = propagate_seed_labels(edge_index, edge_type, 5, torch.tensor([[0, 2]]), dim=8,
                                       hops=3, directed=False)
    assert undirected.shape == (5, 2 * 3 * 8) == (5, label_width(8, 3, directed=False))
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


def _blocks(labels: torch.Tensor, dim: int) -> list[torch.Tensor]:
    """The views of a one-hop propagation, each normalised on its own."""
    return [torch.nn.functional.normalize(block, dim=-1) for block in labels.split(dim, dim=1)]


def test_directed_views_tell_what_an_entity_points_to_from_what_points_to_it() -> None:
    # 2 -> 0 -> 1 by one relation; seeds 1 and 2 (partners 3 and 4 elsewhere)
    edge_index, edge_type = _typed_graph(torch.tensor([[0, 0, 1], [2, 0, 0]]), 1)
    seeds = torch.tensor([[1, 3], [2, 4]])
    dim = 16
    labels = propagate_seed_labels(edge_index, edge_type, 5, seeds, dim=dim, hops=1)
    neighbours, out, into, _ = _blocks(labels, dim)
    # reference: in another graph over the same seeds, 0's only neighbour is seed 1 and 3's
    # only neighbour is seed 2, so their neighbour views are those seeds' labels
    line = _typed_graph(torch.tensor([[1, 0, 0], [2, 0, 3]]), 1)
    lone = _blocks(propagate_seed_labels(*line, 5, seeds, dim=dim, hops=1,
                                         directed=False), dim)[0]
    torch.testing.assert_close(out[0], lone[0])   # 0's only neighbour is seed 1
    torch.testing.assert_close(into[0], lone[3])  # 3's only neighbour is seed 2
    torch.testing.assert_close(neighbours[0], torch.nn.functional.normalize(
        lone[0] + lone[3], dim=0))


def test_hub_damping_weighs_rare_neighbours_up() -> None:
    # entity 6 links to a hub (0, linked to 1-5 as well) and to entity 7 (linked to 8 only);
    # 0 and 7 are seeds. 1 and 8 have one neighbour each: their views are the seeds' labels.
    triples = [[0, 0, i] for i in range(1, 6)] + [[6, 0, 0], [6, 0, 7], [8, 0, 7]]
    edge_index, edge_type = _typed_graph(torch.tensor(triples), 1)
    seeds = torch.tensor([[0, 10], [7, 11]])

    def neighbour_view(damping: float) -> torch.Tensor:
        return _blocks(propagate_seed_labels(edge_index, edge_type, 12, seeds, dim=64, hops=1,
                                             directed=False, hub_damping=damping), 64)[0]

    plain, damped = neighbour_view(0.0), neighbour_view(1.0)
    hub, rare = plain[1], plain[8]
    torch.testing.assert_close(plain[6] @ hub, plain[6] @ rare)  # a plain mean: alike
    assert damped[6] @ rare > damped[6] @ hub + 0.3  # weights 1/2 against 1/6


def test_with_propagation_appends_weighted_labels() -> None:
    joint = torch.randn(4, 3) * 5
    labels = torch.nn.functional.normalize(torch.randn(4, 2), dim=1)
    assert with_propagation(joint, None, 0.5) is joint
    combined = with_propagation(joint, labels, 0.5)
    assert combined.shape == (4, 5)
    torch.testing.assert_close(combined[:, :3].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(combined[:, 3:], 0.5 * labels)
    # Written in place outside autograd, the same values as a concatenation; inside, a
    # gradient still reaches the embedding.
    expected = torch.cat([torch.nn.functional.normalize(joint, dim=-1), 0.5 * labels], dim=1)
    assert torch.equal(combined, expected)
    learned = joint.clone().requires_grad_()
    with_propagation(learned, labels, 0.5).sum().backward()
    assert learned.grad is not None


@pytest.mark.parametrize(("kwargs", "message"), [({"hops": 0}, "must be positive"),
                                                 ({"dim": 0}, "must be positive"),
                                                 ({"hub_damping": -1.0}, "must be >= 0")])
def test_rejects_bad_propagation_options(kwargs: dict[str, float], message: str) -> None:
    edge_index, edge_type = _typed_graph(torch.tensor([[0, 0, 1]]), 1)
    with pytest.raises(ValueError, match=message):
        propagate_seed_labels(edge_index, edge_type, 2, torch.tensor([[0, 1]]), **kwargs)
