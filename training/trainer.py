"""The training loop: AdamW on seed pairs, best-on-valid selection, optional pseudo-labelling."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from model.config import MIMEAConfig, TrainingConfig
from model.finite import NonFiniteError, require_finite
from model.mimea import MIMEA, GraphInputs, MIMEAOutput, active_modalities
from model.objective import alignment_objective
from model.propagation import propagate_seed_labels, with_propagation
from training.evaluation import mutual_nearest_pairs, validation_hits1

logger = logging.getLogger(__name__)


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
    """The model selected before pseudo-labelling began (iterative runs only); ``joint`` is
    the embedding it ranks with (propagated seed labels included)."""

    joint: torch.Tensor
    epochs: int
    best_epoch: int
    wall_s: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: MIMEAConfig, inputs: GraphInputs) -> MIMEA:
    modalities = active_modalities(config.model, inputs)
    dims = {name: int(x.shape[1]) for name, x in inputs.features.items()}
    return MIMEA(config.model, inputs.num_entities, inputs.num_edge_types, dims, modalities)


@torch.no_grad()
def infer(model: MIMEA, inputs: GraphInputs) -> MIMEAOutput:
    """Deterministic forward pass (dropout off, Beta means) over every entity."""
    was_training = model.training
    model.eval()
    output = model(inputs)
    model.train(was_training)
    return output


def train_model(config: MIMEAConfig, inputs: GraphInputs, train_pairs: torch.Tensor,
                valid_pairs: torch.Tensor, *, device: torch.device,
                candidate_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                progress: bool = True,
                on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train MIMEA and return the state that scored best on the validation pairs.

    ``candidate_rows`` are the KG1 and KG2 entity rows in no training or validation pair: the
    entities eligible for pseudo-labels (required when ``config.training.iterative``) and, for
    KG2, distractors in validation.
    """
    if len(train_pairs) == 0:
        raise ValueError("no training pairs: the seed share of the gold alignment is empty; "
                         "raise data.train_ratio or provide more gold pairs")
    start = time.perf_counter()
    seed_everything(config.training.seed)
    # The LogSumExp loss's softmax leaves most of its [B, N] gradient below float32's normal
    # range; denormal arithmetic is many times slower on CPUs, and these values do not matter.
    torch.set_flush_denormal(True)
    inputs = inputs.to(device)
    model = build_model(config, inputs).to(device)
    train_pairs = train_pairs.to(device)
    distractors = (candidate_rows[1] if candidate_rows is not None
                   else torch.empty(0, dtype=torch.long)).to(device)
    run = _Run(config, model, inputs, valid_pairs.to(device), distractors, progress, on_epoch)
    run.fit(train_pairs, config.training.epochs)
    pseudo = torch.empty((0, 2), dtype=torch.long, device=device)
    base = None
    labelled = torch.cat([train_pairs, run.valid_pairs])
    if config.training.iterative:
        if candidate_rows is None:
            raise ValueError("iterative training needs candidate_rows")
        sources, targets = (rows.to(device) for rows in candidate_rows)

        def mutual_pairs(joint: torch.Tensor) -> set[tuple[int, int]]:
            found = mutual_nearest_pairs(
                joint, sources, targets, k=config.eval.csls_k,
                method="sinkhorn" if config.training.pseudo_labels == "sinkhorn" else "csls",
                agree_with_sinkhorn=config.training.pseudo_labels == "agreement",
                sinkhorn_reg=config.training.pseudo_label_reg,
                sinkhorn_iterations=config.eval.sinkhorn_iterations)
            return {tuple(p) for p in found.tolist()}

        def label_rounds(learned: torch.Tensor,
                         seeds: Callable[[torch.Tensor], torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
            """Pseudo-label rounds with no training: the labels change what the joint embedding
            pairs up, and the new pairs (``seeds`` adds the labelled ones) change the labels."""
            found = torch.empty((0, 2), dtype=torch.long, device=device)
            labels = propagate(config, inputs, seeds(found))
            for round_no in range(config.training.label_rounds if labels is not None else 0):
                found = torch.tensor(sorted(mutual_pairs(with_propagation(
                    learned, labels, config.model.propagation_weight))), dtype=torch.long,
                    device=device).reshape(-1, 2)
                labels = propagate(config, inputs, seeds(found))
                logger.info("label round %d: %d mutual pairs", round_no + 1, len(found))
            return found, labels

        # Each round takes the pairs that are mutual nearest neighbours both in the state the
        # last fit ended on and in the best state so far: two snapshots of the model, so a
        # pair must persist to be trusted, even when the last round did not beat the best
        # (where the two are one state, every mutual pair counts). Label rounds refine the
        # labels the first round decodes with.
        for round_no in range(config.training.iterations):
            ended_learned = infer(model, inputs).joint
            model.load_state_dict(run.best_state)
            best_learned = infer(model, inputs).joint
            if base is None:
                base = _base_stage(config, best_learned, inputs, labelled, run, start)
                if config.training.label_rounds:
                    _, run.propagated = label_rounds(best_learned,
                                                     lambda found: torch.cat([train_pairs, found]))
            ended, best = (mutual_pairs(with_propagation(learned, run.propagated,
                                                         config.model.propagation_weight))
                           for learned in (ended_learned, best_learned))
            stable = sorted(ended & best)
            if stable:
                pseudo = torch.tensor(stable, dtype=torch.long, device=device)
            logger.info("pseudo-label round %d: %d mutual pairs, %d stable", round_no + 1,
                        len(best), len(stable))
            run.fit(torch.cat([train_pairs, pseudo]), config.training.iteration_epochs)
    model.load_state_dict(run.best_state)
    model.eval()
    # Selection is over, so the validation pairs are seeds like the others from here on: the
    # labels the final embedding carries propagate from them too.
    if config.training.iterative and base is None:  # no network round: label rounds end it
        learned = infer(model, inputs).joint
        base = _base_stage(config, learned, inputs, labelled, run, start)
        pseudo, propagated = label_rounds(
            learned, lambda found: torch.cat([train_pairs, found, run.valid_pairs]))
    else:
        propagated = propagate(config, inputs,
                               torch.cat([train_pairs, pseudo, run.valid_pairs]))
    return TrainResult(model=model, best_epoch=run.best_epoch, epochs=run.epoch,
                       valid_hits1=run.best_score, history=run.history,
                       pseudo_pairs=len(pseudo), wall_s=time.perf_counter() - start, base=base,
                       propagated=propagated)


def _base_stage(config: MIMEAConfig, learned: torch.Tensor, inputs: GraphInputs,
                labelled: torch.Tensor, run: _Run, start: float) -> BaseStage:
    """The selected model (its ``learned`` joint embedding) before any pseudo-label, ranked
    as a non-iterative run ranks it."""
    joint = with_propagation(learned, propagate(config, inputs, labelled),
                             config.model.propagation_weight)
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
                                 directed=config.model.propagation_directed,
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
    """Mutable state of one training run (epoch counter, best state, history)."""

    def __init__(self, config: MIMEAConfig, model: MIMEA, inputs: GraphInputs,
                 valid_pairs: torch.Tensor, distractors: torch.Tensor, progress: bool,
                 on_epoch: Callable[[dict[str, float]], None] | None) -> None:
        self.config = config
        self.model = model
        self.inputs = inputs
        self.valid_pairs = valid_pairs
        self.distractors = distractors
        self.progress = progress
        self.on_epoch = on_epoch
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.lr,
                                           weight_decay=config.training.weight_decay)
        self.epoch = 0
        self.best_epoch = 0
        self.best_score = -1.0
        self.best_state = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self.generator = torch.Generator().manual_seed(config.training.seed)
        self.propagated: torch.Tensor | None = None

    def joint(self) -> torch.Tensor:
        """The current model's joint embedding with the propagated seed labels appended."""
        return with_propagation(infer(self.model, self.inputs).joint, self.propagated,
                                self.config.model.propagation_weight)

    def fit(self, pairs: torch.Tensor, epochs: int) -> None:
        """Train for up to ``epochs`` more epochs; patience counts from this call.

        The pairs also seed the propagated labels the joint embedding carries from now on, so
        pseudo-labels seed them as they seed the fit.
        """
        self.propagated = propagate(self.config, self.inputs, pairs)
        cfg = self.config.training
        stale = 0
        bar = tqdm(range(epochs), desc="train", disable=not self.progress, leave=False)
        for step in bar:
            lr = epoch_lr(cfg, step, epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.epoch += 1
            losses = self._epoch(pairs)
            record = {"epoch": float(self.epoch), "lr": lr, **losses}
            if len(self.valid_pairs) == 0:
                # Nothing to select on: the latest state is the result.
                self.best_epoch, self.best_state = self.epoch, self.model.state_dict()
            elif self.epoch % cfg.valid_every == 0 or step == epochs - 1:
                score = self._validate()
                record["valid_hits1"] = score
                logger.info("epoch %d: loss %.3f, valid Hits@1 %.4f", self.epoch,
                            losses["total"], score)
                if score > self.best_score:
                    self.best_score, self.best_epoch, stale = score, self.epoch, 0
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    stale += 1
            self.history.append(record)
            if self.on_epoch is not None:
                self.on_epoch(record)
            bar.set_postfix(loss=f"{losses['total']:.3f}",
                            valid_h1=f"{max(self.best_score, 0.0):.3f}")
            if stale >= cfg.patience:
                logger.info("early stop at epoch %d (best %d)", self.epoch, self.best_epoch)
                break

    def _epoch(self, pairs: torch.Tensor) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(pairs), generator=self.generator).to(pairs.device)
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, len(pairs), self.config.training.batch_size):
            batch = pairs[order[start:start + self.config.training.batch_size]]
            terms = alignment_objective(self.model, self.inputs, batch[:, 0], batch[:, 1],
                                        self.config.loss)
            self._require_finite_losses(terms, batches)
            self.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            batches += 1
        return {key: value / max(batches, 1) for key, value in sums.items()}

    def _require_finite_losses(self, terms: dict[str, torch.Tensor], batch: int) -> None:
        """Stop the run at the first NaN or infinite loss: the optimiser step would spread it
        into every parameter, and later scores would be meaningless."""
        for name, value in terms.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteError(
                    f"training diverged at epoch {self.epoch}, batch {batch + 1}: the loss term "
                    f"{name!r} is {float(value.detach())}; check the input features for extreme "
                    f"values or lower training.lr")

    def _validate(self) -> float:
        if len(self.valid_pairs) == 0:
            return 0.0
        # The learned embedding alone: the propagated labels lift every epoch's score alike,
        # so with them an early epoch's plateau can outlast the patience (on FB15K-DB15K
        # training stopped at epoch 8 of 60 that way).
        joint = infer(self.model, self.inputs).joint
        try:
            require_finite(joint, "the joint embedding")
        except NonFiniteError as exc:
            raise NonFiniteError(f"training diverged at epoch {self.epoch}: {exc}") from None
        return validation_hits1(joint, self.valid_pairs, self.distractors,
                                k=self.config.eval.csls_k)
