"""Module 2 of MIMEA: probability-guided modal fusion."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta, kl_divergence

MIN_CONCENTRATION = 2.0
INITIAL_CONCENTRATION = 18.0  # softplus(18) + 2 ≈ 20: Beta(10, 10) at initialisation


@dataclass(frozen=True)
class FusionOutput:
    """Joint embedding and the per-modality confidences that built it.

    joint ``[N, sum_m d_m]``; weights ``[N, M]`` (zero for missing modalities, rows summing to
    one over present ones); alpha, beta ``[N, M]``; kl: scalar.
    """

    joint: torch.Tensor
    weights: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    kl: torch.Tensor


class ProbabilityGuidedFusion(nn.Module):
    r"""Fuse uni-modal embeddings with Beta-distributed, interaction-aware confidences.

    Each modality embedding is projected to a token :math:`t_m`; tokens of one entity attend to
    each other (one attention head; missing modalities are masked out of the keys), then a head
    predicts Beta parameters per token:

    .. math::
        \tilde t = t + \mathrm{MHA}(t, t, t), \quad
        (u_m, v_m) = W \tilde t_m + b, \quad
        \mu_m = \sigma(u_m), \quad \kappa_m = \kappa_{min} + \mathrm{softplus}(v_m), \quad
        (\alpha_m, \beta_m) = (\mu_m \kappa_m, (1 - \mu_m) \kappa_m), \quad
        c_m \sim \mathrm{Beta}(\alpha_m, \beta_m)

    The head predicts the mean :math:`\mu` and the concentration :math:`\kappa` of the Beta
    rather than :math:`(\alpha, \beta)` directly, and starts concentrated (:math:`\kappa \approx
    20`): a flat or U-shaped Beta at initialisation would switch modalities on and off at random
    in every training step. Sampling uses a reparameterised draw in training and the mean
    :math:`\alpha/(\alpha+\beta)` at inference. Confidences of missing modalities are zeroed
    and the rest normalised,
    :math:`w_m = c_m / \sum_{m'\,\text{present}} c_{m'}`, and

    .. math:: z = \big\Vert_m \; w_m \cdot h_m / \lVert h_m \rVert.

    :math:`\mathrm{KL}(\mathrm{Beta}(\alpha,\beta)\,\Vert\,\mathrm{Beta}(a_0,b_0))`, averaged over
    present modalities, keeps the confidences from collapsing to 0 or 1.

    Args:
        in_dims: output size of each modality encoder, in modality order.
        token_dim: size of the interaction tokens.
        interaction: apply cross-modal attention before the Beta head.
        prior: :math:`(a_0, b_0)` of the Beta prior.
        learned: with False, every present modality gets the same weight (ablation).
    """

    def __init__(self, in_dims: list[int], token_dim: int = 128, interaction: bool = True,
                 prior: tuple[float, float] = (5.0, 5.0), learned: bool = True) -> None:
        super().__init__()
        self.in_dims = list(in_dims)
        self.interaction = interaction
        self.learned = learned
        self.register_buffer("prior", torch.tensor(prior, dtype=torch.float32))
        self.tokens = nn.ModuleList(nn.Linear(d, token_dim) for d in self.in_dims)
        self.norm = nn.LayerNorm(token_dim)
        self.attention = nn.MultiheadAttention(token_dim, 1, batch_first=True)
        self.beta_head = nn.Linear(token_dim, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in self.tokens:
            proj.reset_parameters()
        self.norm.reset_parameters()
        # MultiheadAttention's own initialisation of its projections, by public means.
        nn.init.xavier_uniform_(self.attention.in_proj_weight)
        nn.init.zeros_(self.attention.in_proj_bias)
        nn.init.zeros_(self.attention.out_proj.bias)
        nn.init.normal_(self.beta_head.weight, std=0.01)
        with torch.no_grad():
            self.beta_head.bias.copy_(torch.tensor([0.0, INITIAL_CONCENTRATION]))

    def forward(self, embeddings: list[torch.Tensor], mask: torch.Tensor) -> FusionOutput:
        """embeddings: M tensors ``[N, d_m]``; mask: bool ``[N, M]`` of present modalities."""
        if len(embeddings) != len(self.in_dims) or mask.shape[1] != len(self.in_dims):
            raise ValueError(f"expected {len(self.in_dims)} modalities, got {len(embeddings)} "
                             f"embeddings and a mask of shape {tuple(mask.shape)}")
        mask_f = mask.float()
        normalised = [F.normalize(h, dim=-1) for h in embeddings]
        if self.learned:
            alpha, beta = self._beta_parameters(embeddings, mask)
            if self.training:
                confidence = Beta(alpha, beta).rsample().clamp_min(1e-6)
            else:
                confidence = alpha / (alpha + beta)
            prior = Beta(self.prior[0].expand_as(alpha), self.prior[1].expand_as(beta))
            kl_all = kl_divergence(Beta(alpha, beta), prior)
            kl = (kl_all * mask_f).sum() / mask_f.sum().clamp_min(1.0)
        else:
            alpha = beta = confidence = torch.ones_like(mask_f)
            kl = mask_f.new_zeros(())
        confidence = confidence * mask_f
        weights = confidence / confidence.sum(dim=1, keepdim=True).clamp_min(1e-12)
        joint = torch.cat([weights[:, i:i + 1] * h for i, h in enumerate(normalised)], dim=-1)
        return FusionOutput(joint=joint, weights=weights, alpha=alpha, beta=beta, kl=kl)

    def _beta_parameters(self, embeddings: list[torch.Tensor],
                         mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([self.norm(proj(h)) for proj, h in zip(self.tokens, embeddings,
                                                                    strict=True)], dim=1)
        if self.interaction:
            # An entity with no modality at all would make attention rows NaN; let such rows
            # attend to everything (their weights are zeroed by the mask anyway).
            key_padding = ~mask & mask.any(dim=1, keepdim=True)
            attended, _ = self.attention(tokens, tokens, tokens, key_padding_mask=key_padding,
                                         need_weights=False)
            tokens = tokens + attended
        raw = self.beta_head(tokens)
        mean = torch.sigmoid(raw[..., 0]).clamp(1e-4, 1 - 1e-4)
        concentration = MIN_CONCENTRATION + F.softplus(raw[..., 1])
        return mean * concentration, (1 - mean) * concentration

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_dims={self.in_dims}, "
                f"interaction={self.interaction}, learned={self.learned})")
