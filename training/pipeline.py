"""End to end: KG pair folder → features → split → training → evaluation → checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mimea.model.checkpoint import (
    ENTITIES_FILE,
    SPLIT_FILE,
    Checkpoint,
    CheckpointError,
    EmbeddingTables,
    EntityTable,
    load_checkpoint,
    write_checkpoint,
)
from mimea.model.config import EvalConfig, MIMEAConfig, ModelConfig, saved_config
from mimea.model.device import resolve_device
from mimea.model.finite import require_finite
from mimea.model.mimea import GraphInputs
from mimea.model.ranking import Ranking, RankingTerms, pool_plan, ranking_terms, serving_terms
from mimea.training import calibration
from mimea.training.data import KGPairData, load_kg_pair
from mimea.training.evaluation import (
    ServedTerms,
    all_targets_metrics,
    direction_metrics,
    rank_pairs,
    served_record,
)
from mimea.training.features import build_modal_inputs
from mimea.training.memory import release_freed_memory
from mimea.training.progress import Phases, StepBar
from mimea.training.report import RunRecord, render_report
from mimea.training.split import AlignmentSplit, split_pairs
from mimea.training.trainer import SINGLE_PROCESS, Shard, TrainResult, infer, train_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    data: KGPairData
    inputs: GraphInputs
    split: AlignmentSplit


def prepare(data_dir: Path, config: MIMEAConfig, *, visual: Path | None = None,
            allow_pickle: bool = False, phases: Phases | None = None) -> PreparedData:
    """Load and validate the KG pair, build features and split the gold pairs (timed as the
    phases ``load`` and ``features``)."""
    phases = phases or Phases()
    with phases.phase("load"):
        data = load_kg_pair(Path(data_dir), visual=visual, allow_pickle=allow_pickle)
    with phases.phase("features"):
        inputs = build_modal_inputs(data, config.data)
        for name, features in inputs.features.items():
            require_finite(features, f"the {name} features built from {data_dir}")
        split = split_pairs(data.gold, train_ratio=config.data.train_ratio,
                            valid_fraction=config.data.valid_fraction,
                            seed=config.training.seed)
    return PreparedData(data=data, inputs=inputs, split=split)


RANKINGS: tuple[Ranking, ...] = ("cosine", "csls", "sinkhorn")


def evaluate_embeddings(joint: torch.Tensor, pairs: np.ndarray, config: EvalConfig,
                        pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                        ) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics for every ranking (cosine, CSLS, Sinkhorn) and both directions; the Sinkhorn
    plan is taken over ``pools`` (see ``training.evaluation.evaluate_pairs``)."""
    return {ranking: direction_metrics(ranks)
            for ranking, ranks in embedding_ranks(joint, pairs, config, pools).items()}


def embedding_ranks(joint: torch.Tensor, pairs: np.ndarray, config: EvalConfig,
                    pools: tuple[torch.Tensor, torch.Tensor] | None = None,
                    plan: RankingTerms | None = None, served: ServedTerms | None = None,
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The gold ranks behind :func:`evaluate_embeddings`, (KG1→KG2, KG2→KG1) per ranking
    (``plan``: the pools' ``model.ranking.pool_plan``, when already taken; with ``served``,
    the served ranks too, under ``"all_targets"``)."""
    rows = torch.as_tensor(pairs, dtype=torch.long)
    return rank_pairs(joint.cpu(), rows, RANKINGS, k=config.csls_k,
                      sinkhorn_reg=config.sinkhorn_reg,
                      sinkhorn_iterations=config.sinkhorn_iterations, pools=pools,
                      candidates=config.candidates, plan=plan, served=served)


def stored_ranking_terms(joint: torch.Tensor, kgs: torch.Tensor,
                         config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(csls_r, sinkhorn_potential)`` over every entity, as the checkpoint stores them for
    the service (``model.ranking.serving_terms``)."""
    return serving_terms(joint.cpu(), kgs, k=config.csls_k, candidates=config.candidates,
                         reg=config.sinkhorn_reg, iterations=config.sinkhorn_iterations)


def served_metrics(embeddings: EmbeddingTables, kgs: torch.Tensor, pairs: np.ndarray,
                   config: EvalConfig) -> dict[str, Any]:
    """Metrics of ``pairs`` ranked as the service ranks them: every entity of the other KG a
    candidate, the checkpoint's headline ranking from its stored terms."""
    return all_targets_metrics(embeddings.joint, torch.as_tensor(pairs, dtype=torch.long),
                               served_terms(embeddings, kgs, config))


def served_terms(embeddings: EmbeddingTables, kgs: torch.Tensor,
                 config: EvalConfig) -> ServedTerms:
    """What the service ranks a checkpoint's entities by. A checkpoint without stored terms
    is served by CSLS, with r computed as the service computes it at load."""
    if embeddings.csls_r is not None and embeddings.sinkhorn_potential is not None:
        return ServedTerms(kgs, config.headline, embeddings.csls_r,
                           embeddings.sinkhorn_potential, config.sinkhorn_reg)
    terms = ranking_terms(embeddings.joint[kgs == 1], embeddings.joint[kgs == 2],
                          k=config.csls_k, candidates=config.csls_k)
    csls_r = embeddings.joint.new_zeros(len(kgs))
    csls_r[kgs == 1], csls_r[kgs == 2] = terms.r_source, terms.r_target
    return ServedTerms(kgs, "cosine" if config.headline == "cosine" else "csls", csls_r, None,
                       None)


def run_training(data_dir: Path, out_dir: Path, config: MIMEAConfig, *,
                 visual: Path | None = None, allow_pickle: bool = False, progress: bool = True,
                 on_epoch: Callable[[dict[str, float]], None] | None = None,
                 shard: Shard = SINGLE_PROCESS) -> dict[str, Any]:
    """:func:`train_checkpoint`, returning the metrics written to ``metrics.json`` (an empty
    dict in a process other than rank 0)."""
    checkpoint = train_checkpoint(data_dir, out_dir, config, visual=visual,
                                  allow_pickle=allow_pickle, progress=progress,
                                  on_epoch=on_epoch, shard=shard)
    return checkpoint.metrics if checkpoint is not None else {}


def train_checkpoint(data_dir: Path, out_dir: Path, config: MIMEAConfig, *,
                     visual: Path | None = None, allow_pickle: bool = False,
                     progress: bool = True,
                     on_epoch: Callable[[dict[str, float]], None] | None = None,
                     shard: Shard = SINGLE_PROCESS,
                     phases: Phases | None = None) -> Checkpoint | None:
    """Train on ``data_dir``, evaluate on the held-out test pairs, write ``out_dir`` with the
    run's history and report, then decide its alignment there.

    Returns the checkpoint written. In data-parallel training (``shard`` one of several
    processes) only rank 0 evaluates and writes; the others return None once the model is
    trained. Each phase is timed in ``phases``.
    """
    phases = phases or Phases()
    written = _train_and_write(data_dir, out_dir, config, visual=visual,
                               allow_pickle=allow_pickle, progress=progress, on_epoch=on_epoch,
                               shard=shard, phases=phases)
    if written is None:
        return None
    # The model, its inputs and outputs are gone by now: deciding holds the checkpoint, the
    # relation graph and the evaluation's plan over the unlabelled pools only, so the run's
    # peak memory is training's or evaluation's.
    graph, plan = written
    release_freed_memory()
    with phases.phase("alignment decisions"):
        calibration.record_decisions(Path(out_dir), graph, plan)
        return load_checkpoint(Path(out_dir))  # with the decisions' test figures


def _train_and_write(data_dir: Path, out_dir: Path, config: MIMEAConfig, *,
                     visual: Path | None, allow_pickle: bool, progress: bool,
                     on_epoch: Callable[[dict[str, float]], None] | None, shard: Shard,
                     phases: Phases) -> tuple[GraphInputs, RankingTerms] | None:
    """Train, evaluate and write the checkpoint (rank 0); return the relation graph the
    decisions propagate labels over and the Sinkhorn plan over the unlabelled pools, which
    they decode first (None in the other processes)."""
    start = time.perf_counter()
    prepared = prepare(data_dir, config, visual=visual, allow_pickle=allow_pickle,
                       phases=phases)
    data, split = prepared.data, prepared.split
    device = resolve_device(config.training.device)
    logger.info("training on %s with %s: %s", data_dir, device, split.sizes())
    unlabelled = unlabelled_rows(data, split)
    with phases.phase("training"):
        result = train_model(config, prepared.inputs, torch.as_tensor(split.train),
                             torch.as_tensor(split.valid), device=device, progress=progress,
                             candidate_rows=unlabelled, on_epoch=on_epoch, shard=shard)
    if shard.rank != 0:
        return None
    release_freed_memory()  # training's loss matrices and layer blocks
    kgs = torch.as_tensor(data.kgs.astype(np.int64))
    with phases.phase("evaluation"), StepBar("evaluation", 3 + (result.base is not None),
                                             enabled=progress) as bar:
        with bar.step("embedding every entity"):
            output = infer(result.model, prepared.inputs.to(device))
            joint = result.joint(output.joint).cpu()
            result.propagated = None  # in the joint now (alone, 0.9 GB at 100k per KG)
            modalities = dict(zip(result.model.modalities, output.modal, strict=True))
            fusion_weights, mask = output.fusion.weights, output.mask
            del output  # the fused embedding without labels: the joint above replaces it
        with bar.step("ranking terms of every entity"):
            csls_r, potential = stored_ranking_terms(joint, kgs, config.eval)
        embeddings = EmbeddingTables(
            joint=joint, fusion_weights=fusion_weights, mask=mask, modalities=modalities,
            csls_r=csls_r, sinkhorn_potential=potential)
        with bar.step("test, validation and served rankings"):
            # The plan's lists also give the test pairs' CSLS terms among themselves.
            plan = pool_plan(joint, unlabelled, config.eval, keep_lists=True)
            served_by = served_terms(embeddings, kgs, config.eval)
            test_ranks = embedding_ranks(joint, split.test, config.eval, unlabelled, plan,
                                         served=served_by)
            served = test_ranks.pop("all_targets")
            plan = replace(plan, lists=None)
            metrics = _metrics(result, test_ranks, joint, split, config)
        if result.base is not None:
            with bar.step("rankings of the base model"):
                metrics["base"] = _base_metrics(result, split, config, unlabelled)
        metrics["all_targets"] = served_record(served_by.ranking, served)
    metrics["wall_s"] = time.perf_counter() - start
    history = _history(result, test_ranks[config.eval.headline][0], config)
    with phases.phase("report"):
        report = render_report(RunRecord(
            history=history, metrics=metrics, modalities=result.model.modalities,
            fusion_weights=embeddings.fusion_weights, mask=embeddings.mask, kgs=kgs,
            title=str(data_dir)))
    with phases.phase("writing"):
        write_checkpoint(
            Path(out_dir),
            config={"config": config.model_dump(mode="json"),
                    "modalities": result.model.modalities,
                    "data": {"path": str(data_dir), **data.summary(),
                             "warnings": data.warnings},
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
            history=history,
            report=report,
        )
    inputs = prepared.inputs
    return GraphInputs(num_entities=inputs.num_entities, edge_index=inputs.edge_index,
                       edge_type=inputs.edge_type, num_edge_types=inputs.num_edge_types,
                       features={}, masks={}), plan


SPLIT_PARTS = ("train", "valid", "test")


def evaluate_checkpoint(checkpoint_dir: Path, *, part: str = "test",
                        phases: Phases | None = None) -> dict[str, Any]:
    """Recompute the metrics of a checkpoint's saved joint embeddings on its own split.

    Returns the model version, the headline ranking, the pair count, ``rankings`` (every
    ranking, both directions, among the part's pairs as training reported them) and, for the
    test part, ``all_targets`` (:func:`served_metrics`), with ``seconds``: the time of each
    phase (``load``, ``rankings``, ``all_targets``), the rest and the total (of ``phases``,
    by default from this call).
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split part {part!r}; use train, valid or test")
    phases = phases or Phases()
    with phases.phase("load"):
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
    if part != "test":
        with phases.phase("rankings"):
            report["rankings"] = evaluate_embeddings(learned_columns(joint, config.model), pairs,
                                                     config.eval)
        return {**report, "seconds": phases.report()}
    with phases.phase("rankings"):
        labelled = np.concatenate([split["train"].reshape(-1), split["valid"].reshape(-1)])
        pools = free_rows(np.asarray(checkpoint.entities.kgs), labelled)
        report["rankings"] = evaluate_embeddings(joint, pairs, config.eval, pools)
    with phases.phase("all_targets"):
        report["all_targets"] = served_metrics(checkpoint.embeddings,
                                               torch.as_tensor(checkpoint.entities.kgs), pairs,
                                               config.eval)
    return {**report, "seconds": phases.report()}


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


def _metrics(result: TrainResult, test_ranks: dict[str, tuple[torch.Tensor, torch.Tensor]],
             joint: torch.Tensor, split: AlignmentSplit, config: MIMEAConfig) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "headline": config.eval.headline,
        "test": {ranking: direction_metrics(ranks) for ranking, ranks in test_ranks.items()},
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "pseudo_pairs": result.pseudo_pairs,
        "train_s": result.wall_s,
        "s_per_epoch": result.wall_s / max(result.epochs, 1),
    }
    if len(split.valid):
        metrics["valid"] = evaluate_embeddings(learned_columns(joint, config.model), split.valid,
                                               config.eval)
    return metrics


def _base_metrics(result: TrainResult, split: AlignmentSplit, config: MIMEAConfig,
                  unlabelled: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The test figures of the model selected before pseudo-labelling (runs with
    pseudo-labels)."""
    assert result.base is not None
    return {"test": evaluate_embeddings(result.base.joint, split.test, config.eval, unlabelled),
            "epochs": result.base.epochs, "best_epoch": result.base.best_epoch,
            "train_s": result.base.wall_s}


def _history(result: TrainResult, headline_ranks: torch.Tensor,
             config: MIMEAConfig) -> dict[str, Any]:
    """history.json: every epoch's record, the selected epoch, and the gold rank of each test
    pair by the headline ranking, KG1→KG2 (in split.json's order)."""
    return {"epochs": result.history, "best_epoch": result.best_epoch,
            "test_ranks": {"ranking": config.eval.headline, "direction": "kg1_to_kg2",
                           "ranks": headline_ranks.tolist()}}


def _split_record(data: KGPairData, split: AlignmentSplit,
                  config: MIMEAConfig) -> dict[str, Any]:
    def ids(rows: np.ndarray) -> list[list[int]]:
        return data.ids[rows].tolist() if len(rows) else []

    return {"train_ratio": config.data.train_ratio,
            "valid_fraction": config.data.valid_fraction, "seed": config.training.seed,
            "train": ids(split.train), "valid": ids(split.valid), "test": ids(split.test)}
