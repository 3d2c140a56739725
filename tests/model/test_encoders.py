"""Modality encoders (model/encoders.py)."""

from __future__ import annotations

import pytest
import torch

from mimea.model.encoders import FeatureEncoder, ProxyMatching, StructureEncoder

N, D = 12, 8
CONVS = pytest.mark.parametrize("conv", ["gat", "reflection"])


def _ring(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.arange(n)
    dst = (src + 1) % n
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    edge_type = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return edge_index, edge_type


@CONVS
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("concat_layers", [True, False])
def test_structure_output_shape(num_layers: int, concat_layers: bool, conv: str) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, num_layers=num_layers, concat_layers=concat_layers,
                               conv=conv)
    out = encoder(*_ring())
    expected = (num_layers + 1) * D if concat_layers else D
    assert encoder.out_dim == expected
    assert out.shape == (N, expected)


@pytest.mark.parametrize("heads", [1, 2])
def test_structure_heads_are_averaged(heads: int) -> None:
    encoder = StructureEncoder(N, 2, D, heads=heads, concat_layers=False, conv="gat")
    assert encoder(*_ring()).shape == (N, D)


@CONVS
def test_edge_types_change_output_when_relation_aware(conv: str) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, conv=conv).eval()
    edge_index, edge_type = _ring()
    out = encoder(edge_index, edge_type)
    out_flipped = encoder(edge_index, 1 - edge_type)
    assert not torch.allclose(out, out_flipped)


@CONVS
def test_edge_types_ignored_without_relation_awareness(conv: str) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 0, D, conv=conv).eval()
    edge_index, edge_type = _ring()
    assert encoder.relation is None
    torch.testing.assert_close(encoder(edge_index, edge_type), encoder(edge_index, 1 - edge_type))


@CONVS
def test_isolated_nodes_give_finite_output(conv: str) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(6, 2, D, conv=conv).eval()
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    edge_type = torch.tensor([0, 1, 0, 1, 0, 1])
    out = encoder(edge_index, edge_type)  # nodes 4 and 5 have no edge
    assert out.shape == (6, 3 * D)
    assert torch.isfinite(out).all()


@CONVS
def test_isolated_node_starts_from_its_own_embedding(conv: str) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(6, 2, D, conv=conv).eval()
    edge_index = torch.tensor([[0, 1], [1, 0]])
    out = encoder(edge_index, torch.tensor([0, 1]))
    torch.testing.assert_close(out[4, :D], torch.tanh(encoder.entity.weight[4]))


@CONVS
def test_graph_without_edges(conv: str) -> None:
    encoder = StructureEncoder(5, 2, D, conv=conv).eval()
    out = encoder(torch.empty((2, 0), dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert out.shape == (5, 3 * D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("relation_channel", [False, True])
def test_gat_gradients_reach_entity_and_relation_parameters(relation_channel: bool) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, relation_channel=relation_channel, conv="gat")
    encoder(*_ring()).pow(2).sum().backward()
    assert encoder.entity.weight.grad is not None and encoder.entity.weight.grad.abs().sum() > 0
    assert encoder.edge_score is not None and encoder.edge_score.weight.grad is not None
    assert encoder.edge_score.weight.grad.abs().sum() > 0
    if relation_channel:
        assert encoder.relation is not None and encoder.relation.weight.grad is not None
        assert encoder.relation.weight.grad.abs().sum() > 0
    else:
        assert encoder.relation is None


@pytest.mark.parametrize("relation_channel", [False, True])
def test_reflection_gradients_reach_entities_and_relation_vectors(relation_channel: bool) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, conv="reflection", relation_channel=relation_channel)
    encoder(*_ring()).pow(2).sum().backward()
    assert encoder.edge_score is None
    assert encoder.reflection is not None and encoder.reflection.weight.grad is not None
    assert torch.isfinite(encoder.reflection.weight.grad).all()
    assert encoder.reflection.weight.grad.abs().sum() > 0
    assert encoder.entity.weight.grad is not None and encoder.entity.weight.grad.abs().sum() > 0


def test_reflection_self_loop_keeps_a_nodes_own_vector() -> None:
    # one layer, no concat, a node whose only edge is its self-loop: tanh(tanh(h0))
    encoder = StructureEncoder(3, 2, D, num_layers=1, concat_layers=False,
                               conv="reflection").eval()
    out = encoder(torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(out[2], torch.tanh(torch.tanh(encoder.entity.weight[2])))


@CONVS
def test_feature_channel_adds_a_stack_that_spreads_over_neighbours(conv: str) -> None:
    # A bag set on node 0 only reaches node 1 (its ring neighbour) through the extra stack.
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, conv=conv, feature_dims=[5]).eval()
    plain = StructureEncoder(N, 2, D, conv=conv)
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


@CONVS
@pytest.mark.parametrize("proxies", [0, 4])
def test_rows_give_the_full_output_at_those_rows(conv: str, proxies: int) -> None:
    torch.manual_seed(0)
    encoder = StructureEncoder(N, 2, D, conv=conv, proxies=proxies, feature_dims=[3]).eval()
    bag = torch.rand(N, 3)
    rows = torch.tensor([7, 0, 3, 3])
    full = encoder(*_ring(), [bag])
    torch.testing.assert_close(encoder(*_ring(), [bag], rows=rows), full[rows])


def test_unknown_conv_rejected() -> None:
    with pytest.raises(ValueError, match="unknown structure conv"):
        StructureEncoder(N, 2, D, conv="gcn")


def test_structure_repr() -> None:
    text = repr(StructureEncoder(N, 3, D, num_layers=2, concat_layers=False))
    assert text == (f"StructureEncoder({N}, edge_types=3, hidden={D}, layers=2, "
                    "concat_layers=False)")


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
