"""The training loop: AdamW on seed pairs, best-on-valid selection, optional pseudo-labelling.

A run is a sequence of stages: the base fit on the seed pairs (:func:`fit_base`), then
``training.label_rounds`` rounds that only re-seed the propagated labels (:func:`label_rounds`)
and ``training.iterations`` rounds that train the network on pseudo-labels too
(:func:`pseudo_label_rounds`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mimea.model.config import MIMEAConfig, TrainingConfig
from mimea.model.finite import NonFiniteError, require_finite
from mimea.model.mimea import MIMEA, GraphInputs, MIMEAOutput, active_modalities
from mimea.model.objective import StepObjective
from mimea.model.propagation import propagate_seed_labels, with_propagation
from mimea.training.evaluation import mutual_plan_pairs, validation_metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TrainResult:
    """A trained model (best on valid) and how it got there."""

    model: MIMEA
    best_epoch: int
    epochs: int
    valid_hits1: float
    history: list[dict[str, float]] = field(default_factory=list)
    pseudo_pairs: int = 0
    wall_s: float = 0.0
    base: BaseStage | None = None
    propagated: torch.Tensor | None = None

    def joint(self, learned: torch.Tensor) -> torch.Tensor:
        """The joint embedding to rank with: the model's, with the labels of every seed pair
        (training, validation and pseudo-labels) appended when ``model.propagation`` is on."""
        return with_propagation(learned, self.propagated, self.model.config.propagation_weight)


@dataclass(frozen=True)
class BaseStage:
    """The model selected before pseudo-labelling began (runs with pseudo-labels only);
    ``joint`` is the embedding it ranks with (propagated seed labels included)."""

    joint: torch.Tensor
    epochs: int
    best_epoch: int
    wall_s: float


@dataclass(frozen=True)
class Shard:
    """This process's part in data-parallel training: rank ``rank`` of ``size`` processes
    (by default the only one)."""

    rank: int = 0
    size: int = 1

    def from_first(self, value: T) -> T:
        """``value`` as rank 0 has it. What steers the run (a validation score, the
        pseudo-labels) must be the same in every process, or their steps stop matching and
        they wait on each other for ever."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE_PROCESS = Shard()


@dataclass(frozen=True)
class Step:
    """One optimiser step as one process takes it: its batches (slices of the epoch's order
    of the pairs) and each batch's share of the step's pairs, times the number of processes
    (``DistributedDataParallel`` averages the processes' gradients)."""

    batches: list[slice]
    weights: list[float]


def epoch_steps(num_pairs: int, config: TrainingConfig,
                shard: Shard = SINGLE_PROCESS) -> list[Step]:
    """The steps of one epoch over ``num_pairs`` pairs, as process ``shard`` takes them.

    Every step runs the structure encoder over the whole graph once, so an epoch of one step
    per batch costs (pairs / batch_size) graph passes, which grows as pairs × entities. With
    ``steps_per_epoch`` set, once the batches outnumber it each step takes several batches
    (each still with its own negatives) that share one pass: an epoch then costs a fixed
    number of passes plus a loss linear in the pairs. Processes split each step's pairs
    evenly, each cutting its share into batches: the steps are those of one process, so that
    several processes take as many optimiser steps per epoch, each on as many pairs.
    """
    batches = math.ceil(num_pairs / config.batch_size)
    per_step = 1
    if config.steps_per_epoch:
        per_step = max(1, math.ceil(batches / config.steps_per_epoch))
    step_size = max(per_step * config.batch_size, shard.size)
    starts = list(range(0, num_pairs, step_size))
    if len(starts) > 1 and num_pairs - starts[-1] < shard.size:
        starts.pop()  # too few pairs left to give every process one: the step before takes them
    return [_shard_step(lo, hi, config.batch_size, shard)
            for lo, hi in zip(starts, [*starts[1:], num_pairs], strict=True)]


def _shard_step(lo: int, hi: int, batch_size: int, shard: Shard) -> Step:
    """Process ``shard``'s part of the step over pairs ``lo:hi``, in batches."""
    size, extra = divmod(hi - lo, shard.size)
    start = lo + shard.rank * size + min(shard.rank, extra)
    stop = start + size + (shard.rank < extra)
    parts = [slice(at, min(at + batch_size, stop)) for at in range(start, stop, batch_size)]
    return Step(batches=parts,
                weights=[(part.stop - part.start) * shard.size / (hi - lo) for part in parts])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: MIMEAConfig, inputs: GraphInputs) -> MIMEA:
    modalities = active_modalities(config.model, inputs)
    dims = {name: int(x.shape[1]) for name, x in inputs.features.items()}
    return MIMEA(config.model, inputs.num_entities, inputs.num_edge_types, dims, modalities)


@torch.no_grad()
def infer(model: MIMEA, inputs: GraphInputs, rows: torch.Tensor | None = None) -> MIMEAOutput:
    """Deterministic forward pass (dropout off, Beta means) over every entity, or only
    ``rows`` (output row i is entity ``rows[i]``; see :meth:`MIMEA.forward`)."""
    was_training = model.training
    model.eval()
    output = model(inputs, rows=rows)
    model.train(was_training)
    return output


def train_model(config: MIMEAConfig, inputs: GraphInputs, train_pairs: torch.Tensor,
                valid_pairs: torch.Tensor, *, device: torch.device,
                candidate_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                progress: bool = True,
                on_epoch: Callable[[dict[str, float]], None] | None = None,
                shard: Shard = SINGLE_PROCESS) -> TrainResult:
    """Train MIMEA and return the state that scored best on the validation pairs.

    ``candidate_rows`` are the KG1 and KG2 entity rows in no training or validation pair: the
    entities eligible for pseudo-labels (required when the run has label or network rounds)
    and, for KG2, distractors in validation. With ``shard`` one of several processes (their
    process group initialised), the processes train one model data-parallel.
    """
    if len(train_pairs) == 0:
        raise ValueError("no training pairs: the seed share of the gold alignment is empty; "
                         "raise data.train_ratio or provide more gold pairs")
    if config.training.pseudo_labelling and candidate_rows is None:
        raise ValueError("pseudo-labelling (label_rounds or iterations) needs candidate_rows")
    start = time.perf_counter()
    seed_everything(config.training.seed)
    run = _Run(config, inputs, valid_pairs, candidate_rows, device=device, shard=shard,
               progress=progress, on_epoch=on_epoch)
    train_pairs = train_pairs.to(device)
    fit_base(run, train_pairs)
    base, pseudo = None, train_pairs.new_empty((0, 2))
    if not config.training.pseudo_labelling:
        run.restore_best()
        propagated = _final_labels(run, train_pairs, pseudo)
    elif config.training.iterations:
        base, pseudo = pseudo_label_rounds(run, train_pairs, start)
        run.restore_best()
        propagated = _final_labels(run, train_pairs, pseudo)
    else:  # no network round: label rounds end the run, the validation pairs among the seeds
        run.restore_best()
        learned = run.learned()
        base = _base_stage(run, learned, train_pairs, start)
        pseudo, propagated = label_rounds(run, learned, train_pairs, run.valid_pairs)
    run.model.eval()
    return TrainResult(model=run.model, best_epoch=run.best_epoch, epochs=run.epoch,
                       valid_hits1=run.best_score, history=run.history,
                       pseudo_pairs=len(pseudo), wall_s=time.perf_counter() - start, base=base,
                       propagated=propagated)


def fit_base(run: _Run, train_pairs: torch.Tensor) -> None:
    """The base fit: the seed pairs alone, for ``training.epochs`` (what a run without
    pseudo-labels is, and what pseudo-labelling starts from)."""
    run.fit(train_pairs, run.config.training.epochs)


def label_rounds(run: _Run, learned: torch.Tensor, before: torch.Tensor,
                 after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pseudo-label rounds with no training: the labels change what the joint embedding
    (``learned`` with the labels) pairs up, and the new pairs change the labels.

    The labels propagate from ``before``, the pairs found, then ``after``. Returns the last
    round's pairs and labels (None when ``model.propagation`` is off: nothing to re-seed).
    """
    config = run.config
    found = before.new_empty((0, 2))
    labels = propagate(config, run.inputs, torch.cat([before, found, after]))
    for round_no in range(config.training.label_rounds if labels is not None else 0):
        found = torch.tensor(sorted(run.mutual_pairs(learned, labels)), dtype=torch.long,
                             device=before.device).reshape(-1, 2)
        labels = propagate(config, run.inputs, torch.cat([before, found, after]))
        logger.info("label round %d: %d mutual pairs", round_no + 1, len(found))
    return found, labels


def pseudo_label_rounds(run: _Run, train_pairs: torch.Tensor,
                        start: float) -> tuple[BaseStage, torch.Tensor]:
    """Network rounds, each a fit on the seed pairs plus pseudo-labels; returns the base stage
    (the best state before them) and the last round's pseudo-labels.

    A round takes the pairs that are mutual nearest neighbours both in the state the last fit
    ended on and in the best state so far: two snapshots of the model, so a pair must persist
    to be trusted, even when the last round did not beat the best (where the two are one
    state, every mutual pair counts). Label rounds refine the labels the first round decodes
    with.
    """
    cfg = run.config.training
    ended, best = _snapshots(run)
    base = _base_stage(run, best, train_pairs, start)
    if cfg.label_rounds:
        _, run.propagated = label_rounds(run, best, train_pairs, train_pairs.new_empty((0, 2)))
    pseudo = train_pairs.new_empty((0, 2))
    for round_no in range(cfg.iterations):
        if round_no:
            ended, best = _snapshots(run)
        mutual = [run.mutual_pairs(learned, run.propagated) for learned in (ended, best)]
        stable = run.shard.from_first(sorted(mutual[0] & mutual[1]))
        if stable:
            pseudo = torch.tensor(stable, dtype=torch.long, device=train_pairs.device)
        logger.info("pseudo-label round %d: %d mutual pairs, %d stable", round_no + 1,
                    len(mutual[1]), len(stable))
        run.fit(torch.cat([train_pairs, pseudo]), cfg.iteration_epochs)
    return base, pseudo


def _final_labels(run: _Run, train_pairs: torch.Tensor,
                  pseudo: torch.Tensor) -> torch.Tensor | None:
    """The labels the final embedding carries. Selection is over, so the validation pairs are
    seeds like the others: the labels propagate from them too."""
    return propagate(run.config, run.inputs, torch.cat([train_pairs, pseudo, run.valid_pairs]))


def _snapshots(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned joint embedding of the state the last fit ended on, then of the best
    state, which the model keeps."""
    ended = run.learned()
    run.restore_best()
    return ended, run.learned()


def _base_stage(run: _Run, learned: torch.Tensor, train_pairs: torch.Tensor,
                start: float) -> BaseStage:
    """The selected model (its ``learned`` joint embedding) before any pseudo-label, ranked
    as a run without pseudo-labels ranks it."""
    labelled = torch.cat([train_pairs, run.valid_pairs])
    joint = with_propagation(learned, propagate(run.config, run.inputs, labelled),
                             run.config.model.propagation_weight)
    return BaseStage(joint=joint.cpu(), epochs=run.epoch, best_epoch=run.best_epoch,
                     wall_s=time.perf_counter() - start)


def propagate(config: MIMEAConfig, inputs: GraphInputs,
              seeds: torch.Tensor) -> torch.Tensor | None:
    """The seed labels of ``seeds`` propagated over the graph, or None when
    ``model.propagation`` is off."""
    if not config.model.propagation:
        return None
    return propagate_seed_labels(inputs.edge_index, inputs.edge_type, inputs.num_entities, seeds,
                                 dim=config.model.propagation_dim,
                                 hops=config.model.propagation_hops, seed=config.training.seed,
                                 directed=config.model.directed_labels,
                                 hub_damping=config.model.propagation_hub_damping,
                                 num_edge_types=inputs.num_edge_types)


def epoch_lr(config: TrainingConfig, epoch: int, epochs: int) -> float:
    """Learning rate of the ``epoch``-th (0-based) of ``epochs`` epochs of one fit.

    The cosine schedule damps the late-epoch drift of entities outside the seeds, which keep
    moving under constant-lr Adam steps though they are only ever sampled as negatives.
    """
    if config.lr_schedule == "constant" or epochs <= 1:
        return config.lr
    floor = config.lr * config.lr_floor
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * epoch / (epochs - 1)))


class _Run:
    """Mutable state of one training run (model, epoch counter, best state, history)."""

    def __init__(self, config: MIMEAConfig, inputs: GraphInputs, valid_pairs: torch.Tensor,
                 candidate_rows: tuple[torch.Tensor, torch.Tensor] | None, *,
                 device: torch.device, shard: Shard, progress: bool,
                 on_epoch: Callable[[dict[str, float]], None] | None) -> None:
        self.config = config
        self.inputs = inputs.to(device)
        self.model = build_model(config, self.inputs).to(device)
        self.valid_pairs = valid_pairs.to(device)
        self.candidates = None
        if candidate_rows is not None:
            self.candidates = (candidate_rows[0].to(device), candidate_rows[1].to(device))
        self.distractors = (self.candidates[1] if self.candidates is not None
                            else torch.empty(0, dtype=torch.long, device=device))
        self.shard = shard
        self.progress = progress
        self.on_epoch = on_epoch
        self.step_loss = _step_module(StepObjective(self.model, self.inputs, config.loss), shard,
                                      config.training.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.training.lr,
                                           weight_decay=config.training.weight_decay)
        self.epoch = 0
        self.best_epoch = 0
        self.best_score = -1.0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.history: list[dict[str, float]] = []
        self.fits = 0
        self.generator = torch.Generator().manual_seed(config.training.seed)
        self.propagated: torch.Tensor | None = None

    def learned(self) -> torch.Tensor:
        """The current model's learned joint embedding (no propagated labels)."""
        return infer(self.model, self.inputs).joint

    def restore_best(self) -> None:
        """Put the model back in the best state so far."""
        self.model.load_state_dict(self.best_state)

    def mutual_pairs(self, learned: torch.Tensor,
                     labels: torch.Tensor | None) -> set[tuple[int, int]]:
        """The candidate pairs that ``learned`` with ``labels`` appended pairs up both ways:
        the mutual picks of the Sinkhorn plan over their CSLS scores."""
        config = self.config
        assert self.candidates is not None  # train_model checks pseudo-labelling runs have them
        sources, targets = self.candidates
        found = mutual_plan_pairs(
            with_propagation(learned, labels, config.model.propagation_weight), sources,
            targets, k=config.eval.csls_k, sinkhorn_reg=config.training.pseudo_label_reg,
            sinkhorn_iterations=config.eval.sinkhorn_iterations)
        return {tuple(p) for p in found.tolist()}

    def fit(self, pairs: torch.Tensor, epochs: int) -> None:
        """Train for up to ``epochs`` more epochs; patience counts from this call.

        The pairs also seed the propagated labels the joint embedding carries from now on, so
        pseudo-labels seed them as they seed the fit.
        """
        self.propagated = propagate(self.config, self.inputs, pairs)
        cfg = self.config.training
        stale = 0
        self.fits += 1
        name = "training" if self.fits == 1 else f"pseudo-label round {self.fits - 1}"
        steps = len(epoch_steps(len(pairs), cfg, self.shard))
        start = time.perf_counter()
        bar = tqdm(total=epochs * steps, desc=name, unit="step", disable=not self.progress,
                   leave=False)
        for step in range(epochs):
            lr = epoch_lr(cfg, step, epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.epoch += 1
            bar.set_description(f"{name}, epoch {step + 1}/{epochs}")
            losses = self._epoch(pairs, bar)
            record = {"epoch": float(self.epoch), "lr": lr, **losses}
            if len(self.valid_pairs) == 0:
                # Nothing to select on: the latest state is the result.
                self.best_epoch, self.best_state = self.epoch, self.model.state_dict()
            elif self.epoch % cfg.valid_every == 0 or step == epochs - 1:
                bar.set_postfix_str("validating")
                record.update(self._validate())
                if record["valid_hits1"] > self.best_score:
                    self.best_score, self.best_epoch, stale = (record["valid_hits1"], self.epoch,
                                                               0)
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    stale += 1
            self.history.append(record)
            if self.on_epoch is not None:
                self.on_epoch(record)
            bar.set_postfix_str(self._status(record), refresh=True)
            if stale >= cfg.patience:
                logger.info("early stop at epoch %d (best %d)", self.epoch, self.best_epoch)
                break
        bar.close()
        logger.info("%s: %d epochs in %.1f s, best epoch %d%s", name, step + 1,
                    time.perf_counter() - start, self.best_epoch,
                    f" (valid Hits@1 {self.best_score:.4f})" if self.best_score >= 0 else "")

    def _status(self, record: dict[str, float]) -> str:
        """The bar's postfix: the epoch's loss and, once there is one, the latest validation
        with the best so far (never a figure no validation produced)."""
        status = f"loss {record['total']:.3f}"
        if self.best_score < 0:
            return status
        latest = next(r for r in reversed(self.history) if "valid_hits1" in r)
        return (f"{status}, valid Hits@1 {latest['valid_hits1']:.3f} (best "
                f"{self.best_score:.3f} at epoch {self.best_epoch})")

    def _epoch(self, pairs: torch.Tensor, bar: tqdm) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(pairs), generator=self.generator).to(pairs.device)
        sums: dict[str, float] = {}
        steps = epoch_steps(len(pairs), self.config.training, self.shard)
        for number, step in enumerate(steps):
            batches = [pairs[order[part]] for part in step.batches]
            loss, terms = self.step_loss([(batch[:, 0], batch[:, 1]) for batch in batches],
                                         step.weights)
            self._require_finite_losses(terms, number)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.update()
        return {key: value / max(len(steps), 1) for key, value in sums.items()}

    def _require_finite_losses(self, terms: dict[str, torch.Tensor], step: int) -> None:
        """Stop the run at the first NaN or infinite loss: the optimiser step would spread it
        into every parameter, and later scores would be meaningless."""
        for name, value in terms.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteError(
                    f"training diverged at epoch {self.epoch}, step {step + 1}: the loss term "
                    f"{name!r} is {float(value.detach())}; check the input features for extreme "
                    f"values or lower training.lr")

    def _validate(self) -> dict[str, float]:
        """``valid_hits1`` and ``valid_mrr`` as rank 0 scores them (the other processes wait
        for them); logged with the time validation took."""
        start = time.perf_counter()
        metrics = self.shard.from_first(self._score() if self.shard.rank == 0 else {})
        record = {"valid_hits1": metrics.get("hits1", 0.0), "valid_mrr": metrics.get("mrr", 0.0)}
        logger.info("epoch %d: valid Hits@1 %.4f, MRR %.4f (validated in %.1f s)", self.epoch,
                    record["valid_hits1"], record["valid_mrr"], time.perf_counter() - start)
        return record

    def _score(self) -> dict[str, float]:
        # The learned embedding alone: the propagated labels lift every epoch's score alike,
        # so with them an early epoch's plateau can outlast the patience (on FB15K-DB15K
        # training stopped at epoch 8 of 60 that way).
        # Only the entities validation ranks are embedded: the pairs and the distractors.
        rows, local = torch.unique(torch.cat([self.valid_pairs.reshape(-1), self.distractors]),
                                   return_inverse=True)
        joint = infer(self.model, self.inputs, rows).joint
        try:
            require_finite(joint, "the joint embedding")
        except NonFiniteError as exc:
            raise NonFiniteError(f"training diverged at epoch {self.epoch}: {exc}") from None
        pairs = local[:self.valid_pairs.numel()].reshape(-1, 2)
        return validation_metrics(joint, pairs, local[self.valid_pairs.numel():],
                                  k=self.config.eval.csls_k)


def _step_module(objective: StepObjective, shard: Shard, seed: int) -> nn.Module:
    """The step's loss as this process computes it: wrapped in ``DistributedDataParallel``
    (which averages the gradients of the processes) when there are several.

    ``find_unused_parameters``: a step need not reach every parameter (a loss term switched
    off leaves its module idle). Once the model is the same everywhere, each process reseeds
    so that the processes draw different negatives.
    """
    if shard.size == 1:
        return objective
    wrapped = DistributedDataParallel(objective, find_unused_parameters=True)
    torch.manual_seed(seed + shard.rank)
    return wrapped
