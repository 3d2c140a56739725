"""The training objective: joint alignment + modal-adaptive contrast + OT + Beta KL."""

from __future__ import annotations

import torch

from model.config import LossConfig, ModelConfig
from model.contrastive import infonce_pair_loss, lse_pair_loss, modal_adaptive_loss
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
    if loss.joint_loss == "lse":
        candidates = torch.cat([left, right])
        if loss.negatives > 0:
            sampled = torch.randint(len(joint), (loss.negatives,), device=left.device)
            candidates = torch.cat([candidates, sampled])
        local = torch.arange(len(left), device=left.device)
        joint_term = lse_pair_loss(joint[left], joint[right], joint[candidates], local,
                                   local + len(left), gamma=loss.gamma, scale=loss.lse_scale,
                                   shift=loss.lse_shift).mean()
    else:
        joint_term = infonce_pair_loss(joint[left], joint[right],
                                       temperature=loss.temperature).mean()
    terms = {"joint": joint_term}
    if config.modal_contrastive and loss.modal_weight > 0:
        terms["modal"] = loss.modal_weight * modal_adaptive_loss(
            output.modal, output.mask, output.fusion.weights, left, right,
            temperature=loss.temperature, adaptive=config.modal_adaptive)
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
