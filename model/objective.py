"""The training objective: joint alignment + modal-adaptive contrast + OT + Beta KL."""

from __future__ import annotations

import torch

from model.config import LossConfig, ModelConfig
from model.contrastive import PairLoss, infonce_pair_loss, lse_pair_loss, modal_adaptive_loss
from model.mimea import MIMEA, GraphInputs


def alignment_objective(model: MIMEA, inputs: GraphInputs, left: torch.Tensor,
                        right: torch.Tensor, loss: LossConfig) -> dict[str, torch.Tensor]:
    r"""Loss terms for a batch of seed pairs ``(left[i], right[i])`` (entity indices).

    .. math::
        \mathcal{L} = \mathcal{L}_{joint} + \lambda_{m}\mathcal{L}_{modal}
            + \lambda_{ot}\mathcal{L}_{OT} + \lambda_{kl}\,\mathrm{KL}

    The LogSumExp losses take their negatives from every entity of the batch (both sides)
    plus entities drawn from the whole graph (``loss.negatives`` for the joint term,
    ``loss.modal_negatives`` for the modality terms; every entity once when the count is at
    least the graph's size): without them, entities outside the seed pairs are never pushed
    apart and collapse onto hubs. Only those entities
    are fused (see :meth:`MIMEA.forward`). Returns every term and ``total``.
    """
    config: ModelConfig = model.config
    size = len(left)
    batch = torch.cat([left, right])
    joint_negatives = _sample_negatives(loss.negatives, inputs.num_entities, batch)
    modal_negatives = _sample_negatives(loss.modal_negatives, inputs.num_entities, batch)
    rows, local = torch.unique(torch.cat([batch, joint_negatives, modal_negatives]),
                               return_inverse=True)
    output = model(inputs, rows=rows)
    left, right, rest = local[:size], local[size:2 * size], local[2 * size:]
    joint_negatives, modal_negatives = rest[:len(joint_negatives)], rest[len(joint_negatives):]
    joint = output.joint
    everyone = torch.ones_like(left, dtype=torch.bool)
    terms = {"joint": _pair_loss(loss.joint_loss, loss, left, right, joint_negatives)(
        joint, everyone).mean()}
    if config.modal_contrastive and loss.modal_weight > 0:
        terms["modal"] = loss.modal_weight * modal_adaptive_loss(
            output.modal, output.mask, output.fusion.weights, left, right,
            adaptive=config.modal_adaptive,
            pair_loss=_pair_loss(loss.modal_loss, loss, left, right, modal_negatives))
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


def _sample_negatives(count: int, num_entities: int, batch: torch.Tensor) -> torch.Tensor:
    """``count`` entities drawn uniformly, or, when ``count >= num_entities``, every entity not
    in ``batch`` (batch entities are candidates already, and a pair must not be its own
    negative)."""
    if count >= num_entities:
        everyone = torch.arange(num_entities, device=batch.device)
        return everyone[~torch.isin(everyone, batch)]
    return torch.randint(num_entities, (count,), device=batch.device)


def _pair_loss(kind: str, loss: LossConfig, left: torch.Tensor, right: torch.Tensor,
               negatives: torch.Tensor) -> PairLoss:
    """The per-pair loss of one batch; LSE candidates are the batch plus ``negatives``."""
    if kind == "infonce":
        def infonce(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return infonce_pair_loss(h[left[keep]], h[right[keep]], temperature=loss.temperature)
        return infonce

    candidates = torch.cat([left, right, negatives])
    local = torch.arange(len(left), device=left.device)

    def lse(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return lse_pair_loss(h[left[keep]], h[right[keep]], h[candidates], local[keep],
                             local[keep] + len(left), gamma=loss.gamma, scale=loss.lse_scale,
                             shift=loss.lse_shift)
    return lse
