"""The relation-reflection attention layer (model/reflection.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.reflection import RelationReflectionConv

D = 6


def test_single_neighbour_is_reflected_across_its_relation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, D)
    r = F.normalize(torch.randn(1, D), dim=-1)
    out = RelationReflectionConv(D)(x, torch.tensor([[0], [1]]), r)
    expected = x[0] - 2 * (x[0] @ r[0]) * r[0]
    torch.testing.assert_close(out[1], expected)
    torch.testing.assert_close(out[1].norm(), x[0].norm())  # reflections keep norms
    torch.testing.assert_close(out[0], torch.zeros(D))  # node 0 receives nothing


def test_zero_relation_passes_the_neighbour_unchanged() -> None:
    x = torch.randn(2, D)
    out = RelationReflectionConv(D)(x, torch.tensor([[0], [1]]), torch.zeros(1, D))
    torch.testing.assert_close(out[1], x[0])


def test_attention_follows_the_relation_not_the_neighbour() -> None:
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    relations = F.normalize(torch.randn(2, D), dim=-1)
    edge_index = torch.tensor([[0, 1], [2, 2]])
    x = torch.randn(3, D)
    out = conv(x, edge_index, relations)
    logits = relations @ conv.att[0]
    weights = torch.softmax(logits, dim=0)
    reflected = x[:2] - 2 * (x[:2] * relations).sum(-1, keepdim=True) * relations
    torch.testing.assert_close(out[2], weights @ reflected)
    # scaling a neighbour's vector scales its message only: the weights do not change
    x_scaled = x.clone()
    x_scaled[0] *= 3
    out_scaled = conv(x_scaled, edge_index, relations)
    torch.testing.assert_close(out_scaled[2], weights @ torch.cat([3 * reflected[:1],
                                                                   reflected[1:]]))


def test_gradients_reach_attention_and_relations() -> None:
    torch.manual_seed(0)
    conv = RelationReflectionConv(D)
    relations = F.normalize(torch.randn(3, D), dim=-1).requires_grad_()
    edge_index = torch.tensor([[0, 1, 2], [2, 2, 0]])
    conv(torch.randn(3, D), edge_index, relations).pow(2).sum().backward()
    assert conv.att.grad is not None and conv.att.grad.abs().sum() > 0
    assert relations.grad is not None and relations.grad.abs().sum() > 0
