"""Module 4 of MIMEA: modal-adaptive contrastive learning.

The pair loss is a LogSumExp over standardised margins against many negatives (hard negatives
dominate the sum), following the normalised hard-negative objective of Dual-AMN; it is
bidirectional and computed per seed pair so that pairs can be weighted.
:func:`modal_adaptive_loss` applies it to every modality (the objective applies it to the joint
embedding too), weighting each modality's pairs by the fusion confidences of the two entities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mimea.model.underflow import shifted_logsumexp

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(embeddings [N, d], keep [B] bool) → loss of each kept seed pair [K]``."""


def lse_pair_loss(left: torch.Tensor, right: torch.Tensor, candidates: torch.Tensor,
                  left_index: torch.Tensor, right_index: torch.Tensor, *, gamma: float = 1.0,
                  scale: float = 30.0) -> torch.Tensor:
    r"""Per-pair LogSumExp loss against every row of ``candidates``.

    With L2-normalised embeddings and :math:`d(x,y) = \lVert x-y \rVert^2 = 2 - 2\cos(x,y)`,
    for a pair :math:`(l, r)` and each candidate :math:`c`:

    .. math::
        s_c = d(l, r) - d(l, c) + \gamma, \quad
        \hat s_c = (s_c - \mathrm{mean}(s)) / \mathrm{std}(s), \quad
        \mathcal{L}_l = \log \sum_c \exp(\lambda \hat s_c)

    and symmetrically for :math:`r` (Dual-AMN adds a constant :math:`\tau` in the exponent,
    which changes no gradient and is left out). The pair's own two columns count with
    :math:`s_c = 0` and no gradient: once every negative is farther than the positive by the
    margin, they dominate the sum and the pair stops pulling, so aligned pairs leave room for
    the rest. Mean and std are taken over the row's cosines and not back-propagated (which is
    what lets the positive distance, a constant of the row, still get a gradient);
    standardising makes :math:`\lambda` a sharpness that does not depend on the similarity
    range.

    :math:`s_c` is affine in :math:`\cos(l, c)`, so the row is computed as one scaled cosine
    matrix plus per-row terms, with the same value and gradients as the formula but a few
    passes over the ``[B, N]`` matrix instead of a dozen (it is most of a training step).

    Shapes: left, right ``[B, D]``; candidates ``[N, D]``; indices ``[B]`` (rows of the pair
    in ``candidates``) → ``[B]``.
    """
    left, right = F.normalize(left, dim=-1), F.normalize(right, dim=-1)
    candidates = F.normalize(candidates, dim=-1)
    positive = (left - right).pow(2).sum(-1)
    rows = torch.arange(len(left), device=left.device)
    total = left.new_zeros(len(left))
    for anchor in (left, right):
        cosine = anchor @ candidates.T
        with torch.no_grad():
            spread, mean = torch.std_mean(cosine, dim=-1)
            # lambda / std(s); s moves by 2 per unit of cosine
            sharpness = scale / (2.0 * spread.clamp_min(1e-6))
        logits = (2.0 * sharpness)[:, None] * cosine
        # Relative to the row's common term below, the own columns sit at s_c = 0.
        own = -sharpness * (positive + gamma - 2.0)
        logits[rows, left_index] = own
        logits[rows, right_index] = own
        common = sharpness * (positive - positive.detach() - 2.0 * mean)
        total = total + common + shifted_logsumexp(logits)
    return total


def pair_confidence(weights: torch.Tensor, left_index: torch.Tensor,
                    right_index: torch.Tensor) -> torch.Tensor:
    r"""Weight of each pair in each modality, :math:`M \sqrt{w_m(l)\, w_m(r)}`, not trained.

    Equals 1 when both entities weigh every modality equally, 0 when either lacks it.
    Shapes: weights ``[N, M]``, indices ``[B]`` → ``[B, M]``.
    """
    w = weights.detach()
    return w.shape[1] * torch.sqrt(w[left_index] * w[right_index])


def modal_adaptive_loss(modal: list[torch.Tensor], mask: torch.Tensor, weights: torch.Tensor,
                        left_index: torch.Tensor, right_index: torch.Tensor, pair_loss: PairLoss,
                        *, adaptive: bool = True) -> torch.Tensor:
    r"""Sum over modalities of a pair loss on the seed pairs, each pair weighted by its confidence.

    The objective's ``pair_loss`` is the LogSumExp loss with the same kind of negatives as the
    joint term (the batch plus entities sampled from the whole graph), so that each modality
    learns as well on its own as it would alone and no modality starves while the fusion still
    favours another.

    .. math::
        \mathcal{L}_{modal} = \sum_m \frac{1}{|B|} \sum_{(l,r) \in B} c_m(l, r)\,
            \mathcal{L}^{m}_{(l,r)}

    with :math:`c_m` from :func:`pair_confidence` (``adaptive``) or the presence mask of the
    modality in both entities (not ``adaptive``). Pairs missing a modality never teach it.

    Shapes: M tensors ``[N, d_m]``; mask, weights ``[N, M]``; indices ``[B]`` → scalar.
    """
    present = (mask[left_index] & mask[right_index]).float()
    if adaptive:
        confidence = pair_confidence(weights, left_index, right_index) * present
    else:
        confidence = present
    total = modal[0].new_zeros(())
    for i, h in enumerate(modal):
        keep = present[:, i] > 0
        if int(keep.sum()) < 2:
            continue
        per_pair = pair_loss(h, keep)
        total = total + (confidence[keep, i] * per_pair).sum() / len(left_index)
    return total
