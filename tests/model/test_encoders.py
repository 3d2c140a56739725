"""Modality encoders (model/encoders.py)."""

from __future__ import annotations

import pytest
import torch

from mimea.model.encoders import FeatureEncoder, ProxyMatching, StructureEncoder

N, D = 12, 8


def _ring(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.arange(n)
    dst = (src + 1) % n
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    edge_type = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return edge_index, edge_type


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_structure_output_concatenates_every_layer(num_layers: int) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, num_layers=num_layers)
    out = encoder(*_ring())
    assert encoder.out_dim == (num_layers + 1) * D
    assert out.shape == (N, (num_layers + 1) * D)


def test_edge_types_change_output_when_relation_aware() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D).eval()
    edge_index, edge_type = _ring()
    out = encoder(edge_index, edge_type)
    out_flipped = encoder(edge_index, 1 - edge_type)
    assert not torch.allclose(out, out_flipped)


def test_edge_types_ignored_without_relation_awareness() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 0, D).eval()
    edge_index, edge_type = _ring()
    assert encoder.relation is None
    torch.testing.assert_close(encoder(edge_index, edge_type), encoder(edge_index, 1 - edge_type))


def test_graph_terms_are_reused_for_the_same_graph_and_rebuilt_for_a_changed_one() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, relation_channel=True).eval()
    edge_index, edge_type = _ring()
    first = encoder(edge_index, edge_type)
    kept = encoder._graph
    torch.testing.assert_close(encoder(edge_index, edge_type), first, rtol=0, atol=0)
    assert encoder._graph is kept
    edge_type[: N] = 1 - edge_type[: N]  # in place: the same tensor, another graph
    changed = encoder(edge_index, edge_type)
    assert encoder._graph is not kept
    fresh = StructureEncoder(N, 2, D, relation_channel=True).eval()
    fresh.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(changed, fresh(edge_index.clone(), edge_type.clone()), rtol=0,
                               atol=0)
    assert not torch.allclose(changed, first)


def test_isolated_nodes_give_finite_output() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(6, 2, D).eval()
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    edge_type = torch.tensor([0, 1, 0, 1, 0, 1])
    out = encoder(edge_index, edge_type)  # nodes 4 and 5 have no edge
    assert out.shape == (6, 3 * D)
    assert torch.isfinite(out).all()


def test_isolated_node_has_no_structure_signal() -> None:
    # No self-loops: an entity is described by its neighbours, and an isolated one has none.
    torch.manual_seed(0)
    encoder = StructureEncoder(6, 2, D).eval()
    edge_index = torch.tensor([[0, 1], [1, 0]])
    out = encoder(edge_index, torch.tensor([0, 1]))
    torch.testing.assert_close(out[4], torch.zeros(3 * D))


def test_first_layer_input_leaves_out_the_entitys_own_vector() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D).eval()
    before = encoder(*_ring())
    with torch.no_grad():
        encoder.entity.weight[0] += 1.0
    after = encoder(*_ring())
    torch.testing.assert_close(after[0, :D], before[0, :D])  # h^0: the neighbours' mean
    assert not torch.allclose(after[1, :D], before[1, :D])  # a neighbour's h^0 has it


def test_graph_without_edges() -> None:
    encoder = StructureEncoder(5, 2, D).eval()
    out = encoder(torch.empty((2, 0), dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert out.shape == (5, 3 * D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("relation_channel", [False, True])
def test_reflection_gradients_reach_entities_and_relation_vectors(relation_channel: bool) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, relation_channel=relation_channel)
    encoder(*_ring()).pow(2).sum().backward()
    assert encoder.reflection is not None and encoder.reflection.weight.grad is not None
    assert torch.isfinite(encoder.reflection.weight.grad).all()
    assert encoder.reflection.weight.grad.abs().sum() > 0
    assert encoder.entity.weight.grad is not None and encoder.entity.weight.grad.abs().sum() > 0


def test_feature_channel_adds_a_stack_that_spreads_over_neighbours() -> None:
    # A bag set on node 0 only reaches node 1 (its ring neighbour) through the extra stack.
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, feature_dims=[5]).eval()
    plain = StructureEncoder(N, 2, D)
    assert encoder.out_dim == plain.out_dim + 3 * D
    bag = torch.zeros(N, 5)
    out_without = encoder(*_ring(), [bag])
    bag[0, 2] = 1.0
    out_with = encoder(*_ring(), [bag])
    assert out_with.shape == (N, encoder.out_dim)
    assert not torch.allclose(out_with[1], out_without[1])
    torch.testing.assert_close(out_with[:, :plain.out_dim], out_without[:, :plain.out_dim])
    torch.testing.assert_close(out_with[5], out_without[5])  # five hops: out of reach


def test_feature_channel_trains_its_projection() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, feature_dims=[5])
    encoder(*_ring(), [torch.rand(N, 5)]).pow(2).sum().backward()
    grad = encoder.feature_projections[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_feature_channel_count_must_match() -> None:
    encoder = StructureEncoder(N, 2, D, feature_dims=[5])
    with pytest.raises(ValueError, match="expected 1 feature matrices, got 0"):
        encoder(*_ring())


@pytest.mark.parametrize("proxies", [0, 4])
def test_rows_give_the_full_output_at_those_rows(proxies: int) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, proxies=proxies, feature_dims=[3]).eval()
    bag = torch.rand(N, 3)
    rows = torch.tensor([7, 0, 3, 3])
    full = encoder(*_ring(), [bag])
    torch.testing.assert_close(encoder(*_ring(), [bag], rows=rows), full[rows])


def test_structure_repr() -> None:
    text = repr(StructureEncoder(N, 3, D, num_layers=2))
    assert text == f"StructureEncoder({N}, edge_types=3, hidden={D}, layers=2, out_dim={3 * D})"


@pytest.mark.parametrize(("in_dim", "out_dim", "rows"), [(5, 8, 7), (1, 16, 1), (32, 4, 3)])
def test_feature_output_shape(in_dim: int, out_dim: int, rows: int) -> None:
    encoder = FeatureEncoder(in_dim, out_dim)
    assert encoder(torch.randn(rows, in_dim)).shape == (rows, out_dim)


@pytest.mark.parametrize("shape", [(4, 6), (4, 4), (5,), (2, 4, 5)])
def test_feature_wrong_input_shape_rejected(shape: tuple[int, ...]) -> None:
    encoder = FeatureEncoder(5, 8)
    with pytest.raises(ValueError, match=r"expected features of shape \[N, 5\]"):
        encoder(torch.randn(*shape))


def test_feature_repr() -> None:
    assert repr(FeatureEncoder(5, 8)) == "FeatureEncoder(5, 8)"


def test_proxy_matching_keeps_shape_and_reaches_proxies() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, proxies=4)
    out = encoder(*_ring())
    assert out.shape == (N, encoder.out_dim)
    out.pow(2).sum().backward()
    assert encoder.proxy is not None and encoder.proxy.proxies.grad is not None
    assert encoder.proxy.proxies.grad.abs().sum() > 0


def test_proxy_matching_depends_on_the_shared_proxies() -> None:
    torch.manual_seed(0)
    proxy = ProxyMatching(D, 4)
    h = torch.randn(5, D)
    before = proxy(h)
    with torch.no_grad():
        proxy.proxies.mul_(3.0)
    assert not torch.allclose(before, proxy(h))


def test_output_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, output_dropout=0.5)
    train_out = encoder.train()(*_ring())
    assert (train_out == 0).float().mean() > 0.3
    eval_out = encoder.eval()(*_ring())
    assert (eval_out == 0).float().mean() < 0.05
