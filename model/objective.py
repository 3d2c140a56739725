"""The training objective: joint alignment + modal-adaptive contrast + OT + Beta KL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from mimea.model.config import LossConfig, ModelConfig
from mimea.model.contrastive import PairLoss, lse_pair_loss, modal_adaptive_loss
from mimea.model.mimea import MIMEA, GraphInputs, MIMEAOutput

Batch = tuple[torch.Tensor, torch.Tensor]
"""Seed pairs ``(left[i], right[i])`` as two entity index tensors ``[B]``."""


@dataclass(frozen=True)
class BatchRows:
    """One batch's entities: ``positions``, where they sit among the rows of the step's
    forward pass, and, as indices into ``positions``, its pairs' two sides and the negatives of
    its joint and of its modality terms."""

    left: torch.Tensor
    right: torch.Tensor
    joint_negatives: torch.Tensor
    modal_negatives: torch.Tensor
    positions: torch.Tensor


def alignment_objective(model: MIMEA, inputs: GraphInputs, left: torch.Tensor,
                        right: torch.Tensor, loss: LossConfig) -> dict[str, torch.Tensor]:
    r"""Loss terms for a batch of seed pairs ``(left[i], right[i])`` (entity indices).

    .. math::
        \mathcal{L} = \mathcal{L}_{joint} + \lambda_{m}\mathcal{L}_{modal}
            + \lambda_{ot}\mathcal{L}_{OT} + \lambda_{kl}\,\mathrm{KL}

    The LogSumExp losses take their negatives from every entity of the batch (both sides)
    plus ``loss.negatives`` entities drawn from the whole graph, once for the joint term and
    once more for the modality terms (every entity once when the count is at least the
    graph's size): without them, entities outside the seed pairs are never pushed apart and
    collapse onto hubs. Only those entities are fused (see :meth:`MIMEA.forward`). Returns
    every term and ``total``.
    """
    rows, (batch,) = plan_rows(loss, inputs.num_entities, [(left, right)])
    return batch_terms(model, model(inputs, rows=rows), batch, loss)


def plan_rows(loss: LossConfig, num_entities: int,
              batches: Sequence[Batch]) -> tuple[torch.Tensor, list[BatchRows]]:
    """The entities one forward pass embeds for ``batches``, and each batch's rows among them.

    Every batch draws its own negatives, as it would alone (the joint term's, then the
    modality terms', two draws of ``loss.negatives``), so a loss over several batches that
    share one pass over the graph is the sum of their losses.
    """
    own: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
    for left, right in batches:
        batch = torch.cat([left, right])
        parts = [left, right, _sample_negatives(loss.negatives, num_entities, batch),
                 _sample_negatives(loss.negatives, num_entities, batch)]
        entities, local = torch.unique(torch.cat(parts), return_inverse=True)
        own.append((entities, local.split([len(part) for part in parts])))
    rows = own[0][0] if len(own) == 1 else torch.unique(torch.cat([e for e, _ in own]))
    return rows, [BatchRows(*parts, positions=torch.searchsorted(rows, entities))
                  for entities, parts in own]


def batch_terms(model: MIMEA, output: MIMEAOutput, rows: BatchRows,
                loss: LossConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (see :func:`alignment_objective`) from a forward pass whose
    output holds the batch's ``rows``."""
    config: ModelConfig = model.config
    left, right = rows.left, rows.right
    joint = output.joint
    everyone = torch.ones_like(left, dtype=torch.bool)
    joint_pair_loss = _pair_loss(loss, left, right, rows.joint_negatives)
    terms = {"joint": joint_pair_loss(joint, everyone).mean()}
    if config.modal_contrastive and loss.modal_weight > 0:
        terms["modal"] = loss.modal_weight * modal_adaptive_loss(
            output.modal, output.mask, output.fusion.weights, left, right,
            adaptive=config.modal_adaptive,
            pair_loss=_pair_loss(loss, left, right, rows.modal_negatives))
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


class StepObjective(nn.Module):
    """The loss of one optimiser step over one or more batches that share a single pass over
    the graph, each batch weighted (a share of the step's pairs).

    One batch: its weighted total, with the autograd graph as it is. Several batches: their
    per-pair losses would hold several ``[B, C]`` similarity matrices at once, so each batch's
    gradient is taken on its own, against detached copies of its rows of the network's output,
    and added up; the result is a stand-in whose gradient is exactly that sum (see
    :func:`_stand_in`). Being a module, it lets ``DistributedDataParallel`` see every
    parameter the step uses.
    """

    def __init__(self, model: MIMEA, inputs: GraphInputs, loss: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.loss = loss

    def forward(self, batches: Sequence[Batch],
                weights: Sequence[float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss to back-propagate, the weighted sum of each term)``."""
        if len(batches) == 1:
            terms = alignment_objective(self.model, self.inputs, *batches[0], self.loss)
            return weights[0] * terms["total"], terms
        rows, plans = plan_rows(self.loss, self.inputs.num_entities, batches)
        return self._accumulate(self.model(self.inputs, rows=rows), plans, weights)

    def _accumulate(self, output: MIMEAOutput, plans: Sequence[BatchRows],
                    weights: Sequence[float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Each batch's gradient in turn, so that only one batch's loss graph is alive."""
        shared = _differentiable(output)
        params = [p for p in self.parameters() if p.requires_grad]
        grads: list[torch.Tensor | None] = [None] * (len(shared) + len(params))
        sums: dict[str, torch.Tensor] = {}
        for plan, weight in zip(plans, weights, strict=True):
            cut, leaves = _batch_rows(output, plan.positions)
            terms = batch_terms(self.model, cut, plan, self.loss)
            found = torch.autograd.grad(weight * terms["total"], [*leaves, *params],
                                        allow_unused=True)
            rows = [plan.positions if tensor.dim() else None for tensor in shared]
            grads = [_add(total, grad, like, where) for total, grad, like, where in zip(
                grads, found, [*shared, *params], rows + [None] * len(params), strict=True)]
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + weight * value.detach()
        return _stand_in([*shared, *params], grads), sums


def _differentiable(output: MIMEAOutput) -> list[torch.Tensor]:
    """The tensors of ``output`` that carry a gradient, in a fixed order."""
    fusion = [getattr(output.fusion, f.name) for f in fields(output.fusion)]
    return [tensor for tensor in (*output.modal, *fusion) if tensor.requires_grad]


def _batch_rows(output: MIMEAOutput, positions: torch.Tensor) -> tuple[MIMEAOutput,
                                                                      list[torch.Tensor]]:
    """One batch's rows (``positions``) of ``output``, its differentiable tensors new leaves
    (a scalar, the fusion's KL, whole), and those leaves in :func:`_differentiable`'s order:
    the batch's loss back-propagates to them and stops there."""
    leaves: list[torch.Tensor] = []

    def cut(tensor: torch.Tensor) -> torch.Tensor:
        part = tensor[positions] if tensor.dim() else tensor
        if not tensor.requires_grad:
            return part
        leaves.append(part.detach().requires_grad_())
        return leaves[-1]

    fusion = output.fusion
    rows = MIMEAOutput(
        modal=[cut(h) for h in output.modal], mask=output.mask[positions],
        fusion=replace(fusion, **{f.name: cut(getattr(fusion, f.name)) for f in fields(fusion)}))
    return rows, leaves


def _add(total: torch.Tensor | None, grad: torch.Tensor | None, like: torch.Tensor,
         rows: torch.Tensor | None) -> torch.Tensor | None:
    """``total``, the gradient of ``like`` so far, plus one batch's ``grad``: that of the
    batch's ``rows`` of ``like``, or (``rows`` None) of the whole of it."""
    if grad is None:
        return total
    if total is None:
        total = torch.zeros_like(like)
    return total.add_(grad) if rows is None else total.index_add_(0, rows, grad)


def _stand_in(tensors: Sequence[torch.Tensor],
              grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """A scalar whose gradient with respect to each of ``tensors`` is its entry of ``grads``:
    ``sum(t · g)``, so one backward call carries the accumulated gradient through the shared
    pass and into the parameters."""
    parts = [torch.dot(tensor.reshape(-1), grad.reshape(-1))
             for tensor, grad in zip(tensors, grads, strict=True) if grad is not None]
    return torch.stack(parts).sum()


def _sample_negatives(count: int, num_entities: int, batch: torch.Tensor) -> torch.Tensor:
    """``count`` entities drawn uniformly, or, when ``count >= num_entities``, every entity not
    in ``batch`` (batch entities are candidates already, and a pair must not be its own
    negative)."""
    if count >= num_entities:
        everyone = torch.arange(num_entities, device=batch.device)
        return everyone[~torch.isin(everyone, batch)]
    return torch.randint(num_entities, (count,), device=batch.device)


def _pair_loss(loss: LossConfig, left: torch.Tensor, right: torch.Tensor,
               negatives: torch.Tensor) -> PairLoss:
    """The per-pair LogSumExp loss of one batch; its candidates are the batch plus
    ``negatives``."""
    candidates = torch.cat([left, right, negatives])
    local = torch.arange(len(left), device=left.device)

    def lse(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return lse_pair_loss(h[left[keep]], h[right[keep]], h[candidates], local[keep],
                             local[keep] + len(left), gamma=loss.gamma, scale=loss.lse_scale)
    return lse
