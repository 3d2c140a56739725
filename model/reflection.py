"""A relation-reflection graph attention layer (PyG ``MessagePassing``).

PyG's ``GATConv`` reduces an edge feature to one attention logit, so the message a neighbour
sends is the same whatever relation links the two entities. Here each relation type owns a
unit vector :math:`r`, and a neighbour's vector is reflected across the hyperplane orthogonal
to it before aggregation. A reflection is orthogonal, so norms and angles survive any number
of layers, and the two KGs, which share no relation ids, can still learn relation vectors that
play the same role on both sides.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax


class RelationReflectionConv(MessagePassing):
    r"""Attention over neighbours, each reflected by its relation's unit vector.

    .. math::
        h'_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ij}
            \big(h_j - 2\,(h_j^\top r_{ij})\, r_{ij}\big), \qquad
        \alpha_{ij} = \operatorname{softmax}_j\big(a^\top r_{ij}\big)

    The attention depends only on how ``j`` is related to ``i``, and the layer has no weight
    matrix: the relation vectors (owned by the caller, shared across layers) and one attention
    vector :math:`a` are all it learns. An edge whose relation vector is zero (a self-loop, say)
    passes :math:`h_j` unchanged with logit 0.

    Args:
        channels: d, size of node and relation vectors.

    Shapes:
        x ``[N, d]``, edge_index ``[2, E]``, relation ``[E, d]`` (unit or zero rows) → ``[N, d]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(aggr="add", node_dim=0)
        self.channels = channels
        self.att = nn.Parameter(torch.empty(1, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.xavier_uniform_(self.att)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                edge_attr: torch.Tensor) -> torch.Tensor:
        alpha = softmax(edge_attr @ self.att[0], edge_index[1], num_nodes=x.size(0))
        return self.propagate(edge_index, x=x, relation=edge_attr, alpha=alpha)

    def message(self, x_j: torch.Tensor, relation: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
        reflected = x_j - 2.0 * (x_j * relation).sum(-1, keepdim=True) * relation
        return alpha.unsqueeze(-1) * reflected

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"
