"""End to end: KG pair folder → features → split → training → evaluation → checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import (
    ENTITIES_FILE,
    SPLIT_FILE,
    Checkpoint,
    CheckpointError,
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)
from model.config import EvalConfig, MIMEAConfig, ModelConfig, saved_config
from model.device import resolve_device
from model.finite import require_finite
from model.mimea import GraphInputs
from model.ranking import Ranking, ranking_terms, serving_terms
from training import calibration
from training.data import KGPairData, load_kg_pair
from training.evaluation import all_targets_metrics, evaluate_rankings
from training.features import FeatureOptions, build_modal_inputs
from training.split import AlignmentSplit, split_pairs
from training.trainer import SINGLE_PROCESS, Shard, TrainResult, infer, train_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    data: KGPairData
    inputs: GraphInputs
    split: AlignmentSplit


def prepare(data_dir: Path, config: MIMEAConfig, *, visual: Path | None = None,
            allow_pickle: bool = False) -> PreparedData:
    """Load and validate the KG pair, build features and split the gold pairs."""
    data = load_kg_pair(Path(data_dir), visual=visual, allow_pickle=allow_pickle)
    options = FeatureOptions(relation_top_k=config.data.relation_top_k,
                             attribute_top_k=config.data.attribute_top_k,
                             use_attribute_values=config.data.use_attribute_values)
    inputs = build_modal_inputs(data, options)
    for name, features in inputs.features.items():
        require_finite(features, f"the {name} features built from {data_dir}")
    split = split_pairs(data.gold, train_ratio=config.data.train_ratio,
                        valid_fraction=config.data.valid_fraction, seed=config.training.seed)
    return PreparedData(data=data, inputs=inputs, split=split)


RANKINGS: tuple[Ranking, ...] = ("cosine", "csls", "sinkhorn")


def evaluate_embeddings(joint: torch.Tensor, pairs: np.ndarray, config: EvalConfig,
                        pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                        ) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics for every ranking (cosine, CSLS, Sinkhorn) and both directions; the Sinkhorn
    plan is taken over ``pools`` (see ``training.evaluation.evaluate_pairs``)."""
    rows = torch.as_tensor(pairs, dtype=torch.long)
    return evaluate_rankings(joint.cpu(), rows, RANKINGS, k=config.csls_k,
                             sinkhorn_reg=config.sinkhorn_reg,
                             sinkhorn_iterations=config.sinkhorn_iterations, pools=pools,
                             candidates=config.candidates)


def stored_ranking_terms(joint: torch.Tensor, kgs: torch.Tensor,
                         config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(csls_r, sinkhorn_potential)`` over every entity, as the checkpoint stores them for
    the service (``model.ranking.serving_terms``)."""
    return serving_terms(joint.cpu(), kgs, k=config.csls_k, candidates=config.candidates,
                         reg=config.sinkhorn_reg, iterations=config.sinkhorn_iterations)


def served_metrics(embeddings: EmbeddingTables, kgs: torch.Tensor, pairs: np.ndarray,
                   config: EvalConfig) -> dict[str, Any]:
    """Metrics of ``pairs`` ranked as the service ranks them: every entity of the other KG a
    candidate, the checkpoint's headline ranking from its stored terms. A checkpoint without
    them is served by CSLS, with r computed as the service computes it at load."""
    rows = torch.as_tensor(pairs, dtype=torch.long)
    if embeddings.csls_r is not None and embeddings.sinkhorn_potential is not None:
        return all_targets_metrics(embeddings.joint, rows, kgs, ranking=config.headline,
                                   csls_r=embeddings.csls_r,
                                   potential=embeddings.sinkhorn_potential,
                                   reg=config.sinkhorn_reg)
    ranking = "cosine" if config.headline == "cosine" else "csls"
    terms = ranking_terms(embeddings.joint[kgs == 1], embeddings.joint[kgs == 2],
                          k=config.csls_k, candidates=config.csls_k)
    csls_r = embeddings.joint.new_zeros(len(kgs))
    csls_r[kgs == 1], csls_r[kgs == 2] = terms.r_source, terms.r_target
    return all_targets_metrics(embeddings.joint, rows, kgs, ranking=ranking, csls_r=csls_r,
                               potential=None, reg=None)


def run_training(data_dir: Path, out_dir: Path, config: MIMEAConfig, *,
                 visual: Path | None = None, allow_pickle: bool = False, progress: bool = True,
                 on_epoch: Callable[[dict[str, float]], None] | None = None,
                 shard: Shard = SINGLE_PROCESS) -> dict[str, Any]:
    """Train on ``data_dir``, evaluate on the held-out test pairs, write ``out_dir``.

    Returns the metrics that were written to ``metrics.json``. In data-parallel training
    (``shard`` one of several processes) only rank 0 evaluates and writes; the others return
    an empty dict once the model is trained.
    """
    start = time.perf_counter()
    prepared = prepare(data_dir, config, visual=visual, allow_pickle=allow_pickle)
    data, split = prepared.data, prepared.split
    device = resolve_device(config.training.device)
    logger.info("training on %s with %s: %s", data_dir, device, split.sizes())
    unlabelled = unlabelled_rows(data, split)
    result = train_model(config, prepared.inputs, torch.as_tensor(split.train),
                         torch.as_tensor(split.valid), device=device, progress=progress,
                         candidate_rows=unlabelled, on_epoch=on_epoch, shard=shard)
    if shard.rank != 0:
        return {}
    output = infer(result.model, prepared.inputs.to(device))
    joint = result.joint(output.joint).cpu()
    kgs = torch.as_tensor(data.kgs.astype(np.int64))
    csls_r, potential = stored_ranking_terms(joint, kgs, config.eval)
    embeddings = EmbeddingTables(
        joint=joint, fusion_weights=output.fusion.weights, mask=output.mask,
        modalities=dict(zip(result.model.modalities, output.modal, strict=True)),
        csls_r=csls_r, sinkhorn_potential=potential)
    wall_s = time.perf_counter() - start
    metrics = _metrics(result, joint, split, config, wall_s, unlabelled)
    metrics["all_targets"] = served_metrics(embeddings, kgs, split.test, config.eval)
    write_checkpoint(
        Path(out_dir),
        config={"config": config.model_dump(mode="json"),
                "modalities": result.model.modalities,
                "data": {"path": str(data_dir), **data.summary(), "warnings": data.warnings},
                "model_shape": {"num_entities": prepared.inputs.num_entities,
                                "num_edge_types": prepared.inputs.num_edge_types,
                                "feature_dims": {k: int(v.shape[1]) for k, v in
                                                 prepared.inputs.features.items()}}},
        weights=result.model.state_dict(),
        embeddings=embeddings,
        entities=EntityTable(ids=data.ids.tolist(), kgs=data.kgs.astype(int).tolist(),
                             uris=list(data.uris)),
        split=_split_record(data, split, config),
        metrics=metrics,
    )
    calibration.record_decisions(Path(out_dir), prepared.inputs)
    return load_checkpoint(Path(out_dir)).metrics  # with the decisions' test figures


SPLIT_PARTS = ("train", "valid", "test")


def evaluate_checkpoint(checkpoint_dir: Path, *, part: str = "test") -> dict[str, Any]:
    """Recompute the metrics of a checkpoint's saved joint embeddings on its own split.

    Returns the model version, the headline ranking, the pair count, ``rankings`` (every
    ranking, both directions, among the part's pairs as training reported them) and, for the
    test part, ``all_targets`` (:func:`served_metrics`), with the seconds each step took.
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split part {part!r}; use train, valid or test")
    start = time.perf_counter()
    checkpoint = load_checkpoint(Path(checkpoint_dir))
    split = {name: split_rows(checkpoint, name) for name in SPLIT_PARTS}
    pairs = split[part]
    if len(pairs) == 0:
        raise CheckpointError(f"checkpoint {checkpoint_dir} has no {part} pairs")
    config = saved_config(checkpoint.config["config"])
    joint = checkpoint.embeddings.joint
    report: dict[str, Any] = {"checkpoint": str(checkpoint_dir),
                              "model_version": checkpoint.model_version, "part": part,
                              "headline": config.eval.headline, "pairs": len(pairs)}
    seconds = {"load": time.perf_counter() - start}
    if part != "test":
        report["rankings"] = evaluate_embeddings(learned_columns(joint, config.model), pairs,
                                                 config.eval)
        seconds["rankings"] = time.perf_counter() - start - seconds["load"]
        return {**report, "seconds": seconds}
    kgs = torch.as_tensor(checkpoint.entities.kgs)
    labelled = np.concatenate([split["train"].reshape(-1), split["valid"].reshape(-1)])
    pools = free_rows(np.asarray(checkpoint.entities.kgs), labelled)
    report["rankings"] = evaluate_embeddings(joint, pairs, config.eval, pools)
    seconds["rankings"] = time.perf_counter() - start - seconds["load"]
    report["all_targets"] = served_metrics(checkpoint.embeddings, kgs, pairs, config.eval)
    seconds["all_targets"] = time.perf_counter() - start - sum(seconds.values())
    return {**report, "seconds": seconds}


def split_rows(checkpoint: Checkpoint, part: str) -> np.ndarray:
    """The entity rows ``[P, 2]`` of one part of ``split.json``, each pair checked to name a
    KG1 then a KG2 entity of the checkpoint (CheckpointError naming the pair otherwise)."""
    where = f"{checkpoint.path / SPLIT_FILE}"
    pairs = checkpoint.split.get(part)
    if not isinstance(pairs, list):
        raise CheckpointError(f"{where}: {part!r} must be a list of [kg1 id, kg2 id] pairs")
    ents = checkpoint.entities
    row_of = {ent_id: row for row, ent_id in enumerate(ents.ids)}
    rows = np.empty((len(pairs), 2), dtype=np.int64)
    for i, pair in enumerate(pairs):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(type(e) is int for e in pair)):
            raise CheckpointError(f"{where}: {part} pair {i} is {str(pair)[:60]}, not "
                                  f"[kg1 id, kg2 id]")
        for col, ent_id in enumerate(pair):
            row = row_of.get(ent_id)
            if row is None:
                raise CheckpointError(f"{where}: {part} pair {i} names entity id {ent_id}, "
                                      f"which is not in {ENTITIES_FILE}")
            if ents.kgs[row] != col + 1:
                raise CheckpointError(f"{where}: {part} pair {i} names entity id {ent_id} of "
                                      f"KG{ents.kgs[row]} in column {col + 1}")
            rows[i, col] = row
    return rows


def learned_columns(joint: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The network's part of a stored joint embedding, without the propagated seed labels.

    Training and validation pairs seed the labels, which therefore align them by construction;
    their metrics rank with the learned part alone, as model selection does.
    """
    return joint[:, :joint.shape[1] - config.propagation_width]


def unlabelled_rows(data: KGPairData,
                    split: AlignmentSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """KG1 and KG2 rows in no training or validation pair: the pseudo-label candidates, and
    the pools the test and the full-pool validation rank among."""
    return free_rows(data.kgs, np.concatenate([split.train.reshape(-1),
                                               split.valid.reshape(-1)]))


def free_rows(kgs: np.ndarray, labelled: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """KG1 and KG2 rows (``kgs`` holds each entity's KG, 1 or 2) outside ``labelled``."""
    free = np.ones(len(kgs), dtype=bool)
    free[labelled] = False
    return (torch.as_tensor(np.flatnonzero(free & (kgs == 1))),
            torch.as_tensor(np.flatnonzero(free & (kgs == 2))))


def _metrics(result: TrainResult, joint: torch.Tensor, split: AlignmentSplit,
             config: MIMEAConfig, wall_s: float,
             unlabelled: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "headline": config.eval.headline,
        "test": evaluate_embeddings(joint, split.test, config.eval, unlabelled),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "pseudo_pairs": result.pseudo_pairs,
        "train_s": result.wall_s,
        "wall_s": wall_s,
        "s_per_epoch": result.wall_s / max(result.epochs, 1),
        "history": result.history,
    }
    if len(split.valid):
        metrics["valid"] = evaluate_embeddings(learned_columns(joint, config.model), split.valid,
                                               config.eval)
    if result.base is not None:
        metrics["base"] = {"test": evaluate_embeddings(result.base.joint, split.test, config.eval,
                                                       unlabelled),
                           "epochs": result.base.epochs, "best_epoch": result.base.best_epoch,
                           "train_s": result.base.wall_s}
    return metrics


def _split_record(data: KGPairData, split: AlignmentSplit,
                  config: MIMEAConfig) -> dict[str, Any]:
    def ids(rows: np.ndarray) -> list[list[int]]:
        return data.ids[rows].tolist() if len(rows) else []

    return {"train_ratio": config.data.train_ratio,
            "valid_fraction": config.data.valid_fraction, "seed": config.training.seed,
            "train": ids(split.train), "valid": ids(split.valid), "test": ids(split.test)}
