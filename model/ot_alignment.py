"""Module 3 of MIMEA: optimal transport modal alignment."""

from __future__ import annotations

import ot
import torch
import torch.nn.functional as F
from torch import nn


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise ``1 - cos(x_i, y_j)``, shape ``[len(x), len(y)]``, values in [0, 2]."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def transport_plan(cost: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Entropic OT plan between uniform marginals (log-domain Sinkhorn in POT's torch backend).

    A plan still short of ``stopThr`` after 200 iterations is used as it is, without POT's
    warning: one batch's OT term needs no exact plan, and the warning, printed once per run,
    says nothing a user could act on (a diverging run is caught by its loss instead).
    """
    a = cost.new_full((cost.shape[0],), 1.0 / cost.shape[0])
    b = cost.new_full((cost.shape[1],), 1.0 / cost.shape[1])
    return ot.sinkhorn(a, b, cost, reg=epsilon, method="sinkhorn_log", numItermax=200,
                       stopThr=1e-6, warn=False)


class OTModalAlignment(nn.Module):
    r"""Pull each modality's distribution toward the joint space with entropic OT.

    For modality :math:`m` and a batch :math:`B`, uni-modal embeddings are projected into the
    joint space, :math:`u_i = P_m h_{m,i}`, and transported onto the batch's joint embeddings:

    .. math::
        \mathcal{L}_{OT} = \sum_m \langle T_m^\ast, C_m \rangle, \quad
        C_{m,ij} = 1 - \cos(u_i, z_j), \quad
        T_m^\ast = \arg\min_{T \in \Pi(\mathbf{1}/|B_m|, \mathbf{1}/|B|)}
            \langle T, C_m \rangle - \epsilon H(T)

    where :math:`B_m \subseteq B` are the batch entities that have modality :math:`m`. The plan is
    computed by Sinkhorn in POT's torch backend; gradients reach both the projected modality
    and the joint embedding through the cost (envelope theorem), not through the iterations.

    Args:
        in_dims: size of each modality embedding, in modality order.
        joint_dim: size of the joint embedding.
        epsilon: entropic regularisation.

    Shapes: M tensors ``[B, d_m]``, joint ``[B, D]``, mask ``[B, M]`` → scalar loss.
    """

    def __init__(self, in_dims: list[int], joint_dim: int, epsilon: float = 0.05) -> None:
        super().__init__()
        self.in_dims = list(in_dims)
        self.joint_dim = joint_dim
        self.epsilon = epsilon
        self.projections = nn.ModuleList(nn.Linear(d, joint_dim, bias=False) for d in in_dims)

    def forward(self, embeddings: list[torch.Tensor], joint: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        losses = []
        for i, (proj, h) in enumerate(zip(self.projections, embeddings, strict=True)):
            present = mask[:, i]
            if int(present.sum()) < 2:
                continue
            cost = cosine_cost(proj(h[present]), joint)
            # Envelope theorem: at the optimum, d<T*, C>/dC = T*, so the plan is computed
            # without tracking Sinkhorn's iterations and gradients flow through the cost only.
            with torch.no_grad():
                plan = transport_plan(cost, self.epsilon)
            losses.append((plan * cost).sum())
        if not losses:
            return joint.new_zeros(())
        return torch.stack(losses).mean()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_dims={self.in_dims}, joint_dim={self.joint_dim}, "
                f"epsilon={self.epsilon})")
