"""The training objective: joint alignment + modal-adaptive contrast + OT + Beta KL."""

from __future__ import annotations

import torch

from model.config import LossConfig, ModelConfig
from model.contrastive import PairLoss, infonce_pair_loss, lse_pair_loss, modal_adaptive_loss
from model.mimea import MIMEA, MIMEAOutput


def alignment_objective(model: MIMEA, output: MIMEAOutput, left: torch.Tensor,
                        right: torch.Tensor, loss: LossConfig) -> dict[str, torch.Tensor]:
    r"""Loss terms for a batch of seed pairs ``(left[i], right[i])`` (entity rows).

    .. math::
        \mathcal{L} = \mathcal{L}_{joint} + \lambda_{m}\mathcal{L}_{modal}
            + \lambda_{ot}\mathcal{L}_{OT} + \lambda_{kl}\,\mathrm{KL}

    The LogSumExp joint loss takes its negatives from every entity of the batch (both sides)
    plus ``loss.negatives`` entities drawn from the whole graph: without the latter, entities
    outside the seed pairs are never pushed apart and collapse onto hubs. Returns every term and
    ``total``.
    """
    config: ModelConfig = model.config
    joint = output.joint
    everyone = torch.ones_like(left, dtype=torch.bool)
    terms = {"joint": _pair_loss(loss.joint_loss, loss, left, right, len(joint))(
        joint, everyone).mean()}
    if config.modal_contrastive and loss.modal_weight > 0:
        terms["modal"] = loss.modal_weight * modal_adaptive_loss(
            output.modal, output.mask, output.fusion.weights, left, right,
            adaptive=config.modal_adaptive,
            pair_loss=_pair_loss(loss.modal_loss, loss, left, right, len(joint)))
    if model.ot is not None and loss.ot_weight > 0:
        sample = torch.cat([left, right])
        if len(sample) > loss.ot_batch:
            keep = torch.randperm(len(sample), device=sample.device)[: loss.ot_batch]
            sample = sample[keep]
        terms["ot"] = loss.ot_weight * model.ot([h[sample] for h in output.modal],
                                                joint[sample], output.mask[sample])
    if config.fusion and loss.kl_weight > 0:
        terms["kl"] = loss.kl_weight * output.fusion.kl
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms


def _pair_loss(kind: str, loss: LossConfig, left: torch.Tensor, right: torch.Tensor,
               num_entities: int) -> PairLoss:
    """The per-pair loss of one batch; LSE candidates are the batch plus sampled entities."""
    if kind == "infonce":
        def infonce(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return infonce_pair_loss(h[left[keep]], h[right[keep]], temperature=loss.temperature)
        return infonce

    candidates = torch.cat([left, right])
    if loss.negatives > 0:
        sampled = torch.randint(num_entities, (loss.negatives,), device=left.device)
        candidates = torch.cat([candidates, sampled])
    local = torch.arange(len(left), device=left.device)

    def lse(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return lse_pair_loss(h[left[keep]], h[right[keep]], h[candidates], local[keep],
                             local[keep] + len(left), gamma=loss.gamma, scale=loss.lse_scale,
                             shift=loss.lse_shift)
    return lse
