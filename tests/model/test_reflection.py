"""The relation-reflection attention layer and its edge grouping (model/reflection.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimea.model import reflection
from mimea.model.reflection import RelationGroups, RelationReflectionConv, reflect_and_sum

D = 6


def _conv(conv: RelationReflectionConv, x: torch.Tensor, edge_index: torch.Tensor,
          edge_type: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    groups = RelationGroups.from_edges(edge_index, edge_type, len(x))
    return conv(x, groups, vectors)


def _per_edge(conv: RelationReflectionConv, x: torch.Tensor, edge_index: torch.Tensor,
              edge_type: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """The layer's equation edge by edge, as a reference."""
    out = torch.zeros_like(x)
    logits = vectors[edge_type] @ conv.att[0]
    for i in range(len(x)):
        into = (edge_index[1] == i).nonzero().flatten()
        if len(into) == 0:
            continue
        weights = torch.softmax(logits[into], dim=0)
        for weight, edge in zip(weights, into.tolist(), strict=True):
            h, r = x[edge_index[0, edge]], vectors[edge_type[edge]]
            out[i] += weight * (h - 2 * (h @ r) * r)
    return out


def test_single_neighbour_is_reflected_across_its_relation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, D)
    r = F.normalize(torch.randn(1, D), dim=-1)
    out = _conv(RelationReflectionConv(D), x, torch.tensor([[0], [1]]), torch.tensor([0]), r)
    expected = x[0] - 2 * (x[0] @ r[0]) * r[0]
    torch.testing.assert_close(out[1], expected)
    torch.testing.assert_close(out[1].norm(), x[0].norm())  # reflections keep norms
    torch.testing.assert_close(out[0], torch.zeros(D))  # node 0 receives nothing


def test_zero_relation_passes_the_neighbour_unchanged() -> None:
    x = torch.randn(2, D)
    out = _conv(RelationReflectionConv(D), x, torch.tensor([[0], [1]]), torch.tensor([0]),
                torch.zeros(1, D))
    torch.testing.assert_close(out[1], x[0])


def test_attention_follows_the_relation_not_the_neighbour() -> None:
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    relations = F.normalize(torch.randn(2, D), dim=-1)
    edge_index = torch.tensor([[0, 1], [2, 2]])
    x = torch.randn(3, D)
    out = _conv(conv, x, edge_index, torch.tensor([0, 1]), relations)
    logits = relations @ conv.att[0]
    weights = torch.softmax(logits, dim=0)
    reflected = x[:2] - 2 * (x[:2] * relations).sum(-1, keepdim=True) * relations
    torch.testing.assert_close(out[2], weights @ reflected)
    # scaling a neighbour's vector scales its message only: the weights do not change
    x_scaled = x.clone()
    x_scaled[0] *= 3
    out_scaled = _conv(conv, x_scaled, edge_index, torch.tensor([0, 1]), relations)
    torch.testing.assert_close(out_scaled[2], weights @ torch.cat([3 * reflected[:1],
                                                                   reflected[1:]]))


def test_grouped_layer_equals_the_per_edge_equation() -> None:
    # Repeated edges, several edges of one type into a node, and a type never used.
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    x = torch.randn(7, D)
    vectors = torch.cat([F.normalize(torch.randn(3, D), dim=-1), torch.zeros(1, D)])
    edge_index = torch.randint(7, (2, 40))
    edge_index[:, 1] = edge_index[:, 0]
    edge_type = torch.randint(4, (40,))
    edge_type[0] = 2
    groups = RelationGroups.from_edges(edge_index, edge_type, 7)
    assert len(groups.target) < 40
    torch.testing.assert_close(_conv(conv, x, edge_index, edge_type, vectors),
                               _per_edge(conv, x, edge_index, edge_type, vectors))


def test_restricted_groups_give_the_wanted_rows_unchanged() -> None:
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    x = torch.randn(9, D)
    vectors = F.normalize(torch.randn(3, D), dim=-1)
    edge_index, edge_type = torch.randint(9, (2, 50)), torch.randint(3, (50,))
    groups = RelationGroups.from_edges(edge_index, edge_type, 9)
    wanted = torch.zeros(9, dtype=torch.bool)
    wanted[[1, 4, 8]] = True
    part = groups.restrict(wanted)
    assert set(part.target.tolist()) <= {1, 4, 8}
    full = conv(x, groups, vectors)
    restricted = conv(x, part, vectors)
    torch.testing.assert_close(restricted[wanted], full[wanted])
    torch.testing.assert_close(restricted[~wanted], torch.zeros(6, D))


def test_graph_without_edges_gives_zeros() -> None:
    groups = RelationGroups.from_edges(torch.empty((2, 0), dtype=torch.long),
                                       torch.empty(0, dtype=torch.long), 4)
    out = RelationReflectionConv(D)(torch.randn(4, D), groups, torch.zeros(0, D))
    torch.testing.assert_close(out, torch.zeros(4, D))


def test_gradients_reach_inputs_attention_and_relations() -> None:
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    relations = F.normalize(torch.randn(3, D), dim=-1).requires_grad_()
    x = torch.randn(3, D, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2], [2, 2, 0]])
    _conv(conv, x, edge_index, torch.tensor([0, 1, 2]), relations).pow(2).sum().backward()
    assert conv.att.grad is not None and conv.att.grad.abs().sum() > 0
    assert relations.grad is not None and relations.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def _reference_reflect_and_sum(mean: torch.Tensor, relations: torch.Tensor,
                               edge_type: torch.Tensor, alpha: torch.Tensor,
                               target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r = relations[edge_type]
    messages = alpha[:, None] * (mean - 2 * (mean * r).sum(-1, keepdim=True) * r)
    return torch.zeros(num_nodes, mean.size(1), dtype=mean.dtype).index_add(0, target, messages)


@pytest.mark.parametrize("chunk", [3, 1000])
def test_blockwise_reflection_matches_autograd_of_the_formula(
        monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # Several blocks (chunk 3) and one; a zero relation row; gradients checked numerically.
    monkeypatch.setattr(reflection, "CHUNK", chunk)
    torch.manual_seed(0)
    groups, nodes = 11, 5
    mean = torch.randn(groups, D, dtype=torch.double, requires_grad=True)
    relations = torch.cat([F.normalize(torch.randn(3, D, dtype=torch.double), dim=-1),
                           torch.zeros(1, D, dtype=torch.double)]).requires_grad_()
    edge_type = torch.randint(4, (groups,))
    alpha = torch.rand(groups, dtype=torch.double, requires_grad=True)
    target = torch.randint(nodes, (groups,))
    inputs = (mean, relations, edge_type, alpha, target, nodes)
    torch.testing.assert_close(reflect_and_sum(*inputs), _reference_reflect_and_sum(*inputs))
    assert torch.autograd.gradcheck(reflect_and_sum, inputs)
    weights = torch.randn(nodes, D, dtype=torch.double)
    ours = torch.autograd.grad((reflect_and_sum(*inputs) * weights).sum(),
                               [mean, relations, alpha])
    reference = torch.autograd.grad((_reference_reflect_and_sum(*inputs) * weights).sum(),
                                    [mean, relations, alpha])
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected)
