"""Alignment decisions: for each entity, its counterpart in the other KG with a probability,
or no match.

People merging two KGs need a decision per entity, not a ranking. The decoder takes the sparse
Sinkhorn plan over the unlabelled entities of both KGs (``model/ranking.py``) and keeps the
pairs that are each other's best by plan mass: a one-to-one alignment in which an entity
whose best candidate prefers another entity gets no counterpart. Each kept pair gets a match
probability from a logistic calibration (fitted on held-out labelled pairs in
``training/calibration.py``) of what the plan and the embeddings say about it: the plan's
row- and column-normalised mass as log-odds, and the agreement (cosine) of the two entities
in each modality and in the propagated seed labels, where both entities have them. A pair is
a match when its probability reaches a threshold; seed pairs (training and validation) are
matches by definition.

Everything is per candidate edge or per entity: no ``[N1, N2]`` matrix exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mimea.model.checkpoint import (
    CONFIG_FILE,
    DECISIONS_KEY,
    Checkpoint,
    CheckpointError,
    DecisionTables,
    EntityTable,
)
from mimea.model.config import EvalConfig
from mimea.model.ranking import RankingTerms, pool_plan
from mimea.model.similarity import segment_logsumexp

MATCH, SEED, NO_MATCH = "match", "seed", "no_match"
PLAN_FEATURES = ("plan_row", "plan_col")
AGREEMENT_PREFIX = "agree."
PROPAGATED = "propagated"  # agreement table of the joint embedding's propagated-label columns
MAX_LOG_ODDS = 50.0  # a row with one candidate has infinite odds; keep the features finite
ROW_BLOCK = 4_096  # entities converted to Python values at a time when listing decisions
FORMATS = ("tsv", "jsonl")
COLUMNS = ("kg", "id", "uri", "decision", "counterpart_id", "counterpart_uri", "probability",
           "runner_up_id", "runner_up_uri")

Pools = tuple[torch.Tensor, torch.Tensor]
AgreementTables = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PoolDecode:
    """The mutual-best pairs of the plan between two pools of entities.

    ``sources``/``targets`` ``[P]`` are entity rows (KG1, KG2) of the kept pairs, ``features``
    what the calibration reads of each (``[P]`` float64, NaN where an agreement is unknown),
    and ``runner_up`` ``[N]`` each pooled entity's best candidate other than its kept
    partner (-1 outside the pools or without one).
    """

    sources: torch.Tensor
    targets: torch.Tensor
    features: dict[str, torch.Tensor]
    runner_up: torch.Tensor

    def confident(self, mass: float) -> torch.Tensor:
        """Pairs ``[C, 2]`` holding at least ``mass`` of their row and of their column of the
        plan (the features are the log-odds of those shares)."""
        odds = math.log(mass / (1.0 - mass))
        keep = (self.features["plan_row"] >= odds) & (self.features["plan_col"] >= odds)
        return torch.stack([self.sources[keep], self.targets[keep]], dim=1)


def decode_pools(embedding: torch.Tensor, pools: Pools, settings: EvalConfig,
                 tables: AgreementTables, plan: RankingTerms | None = None) -> PoolDecode:
    """Decode the one-to-one alignment between the pools ``(KG1 rows, KG2 rows)`` of
    ``embedding [N, d]``: the sparse Sinkhorn plan of ``settings`` (CSLS k, candidates,
    entropy, iterations; ``plan`` when the caller has it from ``model.ranking.pool_plan``),
    its mutual-best edges and their features (see :func:`plan_features` and
    :func:`agreement_features`)."""
    rows1, rows2 = pools
    if len(rows1) == 0 or len(rows2) == 0:
        return PoolDecode(sources=rows1[:0], targets=rows2[:0],
                          features={name: torch.zeros(0, dtype=torch.float64)
                                    for name in (*PLAN_FEATURES, *_agreement_names(tables))},
                          runner_up=torch.full((len(embedding),), -1, dtype=torch.long))
    terms = plan if plan is not None else pool_plan(embedding, pools, settings)
    log_plan = terms.edge_log_plan().double()
    src, tgt = terms.edges[:, 0], terms.edges[:, 1]
    edge = torch.arange(len(log_plan))
    kept = torch.nonzero((segment_argmax(log_plan, src, len(rows1))[src] == edge)
                         & (segment_argmax(log_plan, tgt, len(rows2))[tgt] == edge)).squeeze(1)
    sources, targets = rows1[src[kept]], rows2[tgt[kept]]
    features = plan_features(log_plan, terms.edges, kept, (len(rows1), len(rows2)))
    features.update(agreement_features(tables, sources, targets))
    others = log_plan.index_fill(0, kept, -math.inf)
    runner_up = torch.full((len(embedding),), -1, dtype=torch.long)
    for rows, own, other_rows, col in ((rows1, src, rows2, tgt), (rows2, tgt, rows1, src)):
        best = segment_argmax(others, own, len(rows))
        found = best >= 0
        runner_up[rows[found]] = other_rows[col[best[found]]]
    return PoolDecode(sources=sources, targets=targets, features=features, runner_up=runner_up)


def segment_argmax(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Per segment of ``index`` (``[size]``), the position of its largest finite value in
    ``values [E]`` (the first on ties), -1 for a segment with none."""
    peak = values.new_full((size,), -math.inf).scatter_reduce(0, index, values, "amax")
    hit = (values == peak[index]) & torch.isfinite(values)
    edge = torch.arange(len(values), device=values.device)
    first = torch.full((size,), len(values), device=values.device).scatter_reduce(
        0, index[hit], edge[hit], "amin")
    return torch.where(first == len(values), -1, first)


def plan_features(log_plan: torch.Tensor, edges: torch.Tensor, kept: torch.Tensor,
                  sizes: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``plan_row``/``plan_col``: the log-odds of each kept edge's share of its row's and its
    column's plan mass, ``log P_st - log sum_{other edges} P``: the row-normalised mass
    ``n1 P_st`` as odds, so a runner-up close behind lowers it as much as a weak best."""
    features = {}
    for name, segments, size in zip(PLAN_FEATURES, edges.T, sizes, strict=True):
        total = segment_logsumexp(log_plan, segments, size)[segments[kept]]
        features[name] = share_log_odds(log_plan[kept] - total)
    return features


def share_log_odds(log_share: torch.Tensor) -> torch.Tensor:
    """``log q - log(1 - q)`` of shares given as ``log q`` (``1 - q`` taken at ``q <= 1 -
    1e-12``), bounded by :data:`MAX_LOG_ODDS`: a share of its row's or column's plan mass as
    the decoder's features read it."""
    rest = torch.log(-torch.expm1(log_share.clamp(max=-1e-12)))
    return (log_share - rest).clamp(-MAX_LOG_ODDS, MAX_LOG_ODDS)


def agreement_tables(embeddings: Mapping[str, torch.Tensor], mask: torch.Tensor,
                     modalities: list[str], joint: torch.Tensor,
                     propagated_width: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (table [N, d], present [N] bool)}``: each modality's table (present where
    ``mask``'s column says so) and, when ``propagated_width`` > 0, the last columns of
    ``joint`` (present where a seed label reached the entity)."""
    tables = {m: (embeddings[m], mask[:, i].bool()) for i, m in enumerate(modalities)}
    if propagated_width > 0:
        labels = joint[:, joint.shape[1] - propagated_width:]
        tables[PROPAGATED] = (labels, labels.norm(dim=1) > 0)
    return tables


def _agreement_names(tables: AgreementTables) -> list[str]:
    return [AGREEMENT_PREFIX + name for name in tables]


def agreement_features(tables: AgreementTables, sources: torch.Tensor,
                       targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """``agree.<name>``: the cosine of each pair in each table, NaN where either entity lacks
    it (the calibration reads NaN as an average agreement)."""
    features = {}
    for key, (table, present) in zip(_agreement_names(tables), tables.values(), strict=True):
        cos = (F.normalize(table[sources].float(), dim=1)
               * F.normalize(table[targets].float(), dim=1)).sum(dim=1).double()
        features[key] = torch.where(present[sources] & present[targets], cos, math.nan)
    return features


@dataclass(frozen=True)
class Calibration:
    """Logistic map from a decoded pair's features to the probability that it is right:
    ``sigmoid(bias + sum_i weight_i (x_i - center_i) / scale_i)``, a missing (NaN) feature
    counting as its center."""

    names: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def probability(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[P]`` float32 probabilities of the pairs whose ``features`` are given."""
        logits = standardised(features, self) @ torch.tensor(self.weights, dtype=torch.float64)
        return torch.sigmoid(logits + self.bias).float()

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "center": list(self.center),
                "scale": list(self.scale), "weights": list(self.weights), "bias": self.bias}

    @classmethod
    def from_json(cls, raw: object) -> Calibration:
        """The calibration :meth:`to_json` wrote; ValueError naming what is wrong."""
        if not isinstance(raw, dict) or not isinstance(raw.get("names"), list):
            raise ValueError("the calibration must be an object with a list of 'names'")
        size = len(raw["names"])
        lists = {key: raw.get(key) for key in ("center", "scale", "weights")}
        for key, values in lists.items():
            if (not isinstance(values, list) or len(values) != size
                    or not all(_finite_number(v) for v in values)):
                raise ValueError(f"the calibration's {key!r} must be {size} finite numbers")
        if not _finite_number(raw.get("bias")) or not all(v > 0 for v in raw["scale"]):
            raise ValueError("the calibration needs a finite 'bias' and positive scales")
        return cls(names=tuple(str(n) for n in raw["names"]),
                   center=tuple(float(v) for v in raw["center"]),
                   scale=tuple(float(v) for v in raw["scale"]),
                   weights=tuple(float(v) for v in raw["weights"]), bias=float(raw["bias"]))


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def standardised(features: Mapping[str, torch.Tensor], calibration: Calibration) -> torch.Tensor:
    """``[P, F]`` float64 features in the calibration's units, 0 where one is missing."""
    columns = [(features[name].double() - center) / scale for name, center, scale
               in zip(calibration.names, calibration.center, calibration.scale, strict=True)]
    return torch.nan_to_num(torch.stack(columns, dim=1), nan=0.0)


@dataclass(frozen=True)
class Decisions:
    """The decided alignment of a checkpoint: the tables, the default threshold a pairing's
    probability must reach to be a match, and the calibration that gave the probabilities."""

    tables: DecisionTables
    threshold: float
    calibration: Calibration
    target_precision: float

    def settings(self) -> dict[str, Any]:
        """What ``config.json`` stores under ``"decisions"``."""
        return {"threshold": self.threshold, "target_precision": self.target_precision,
                "calibration": self.calibration.to_json(),
                "decoder": "mutual best pairs of the sparse Sinkhorn plan"}


def stored_decisions(checkpoint: Checkpoint) -> Decisions | None:
    """The decisions a checkpoint stores (None for one written without them); CheckpointError
    for a calibration that does not read."""
    if checkpoint.decisions is None:
        return None
    settings = checkpoint.config[DECISIONS_KEY]
    try:
        calibration = Calibration.from_json(settings.get("calibration"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {CONFIG_FILE}: "
                              f"{DECISIONS_KEY}.calibration: {exc}") from exc
    return Decisions(tables=checkpoint.decisions, threshold=float(settings["threshold"]),
                     calibration=calibration,
                     target_precision=float(settings.get("target_precision", math.nan)))


def assemble(num_entities: int, seeds: torch.Tensor, decode: PoolDecode,
             probability: torch.Tensor) -> DecisionTables:
    """The ``[N]`` tables of an alignment: ``seeds [S, 2]`` paired with probability 1, the
    decoded pairs with ``probability [P]``, every other entity without a counterpart."""
    counterpart = torch.full((num_entities,), -1, dtype=torch.long)
    chance = torch.zeros(num_entities, dtype=torch.float32)
    seed = torch.zeros(num_entities, dtype=torch.bool)
    for left, right, value in ((seeds[:, 0], seeds[:, 1], None),
                               (decode.sources, decode.targets, probability)):
        counterpart[left], counterpart[right] = right, left
        chance[left] = chance[right] = 1.0 if value is None else value.float()
    seed[seeds.reshape(-1)] = True
    return DecisionTables(counterpart=counterpart, probability=chance,
                          runner_up=decode.runner_up, seed=seed)


@dataclass(frozen=True)
class AlignmentRow:
    """One entity's line of the alignment at a threshold.

    ``counterpart`` is set for a match or a seed; ``probability`` is the decoded pairing's
    (for ``no_match``: the pairing the threshold rejected, None when decoding gave none);
    ``runner_up`` is the best candidate other than the counterpart (for ``no_match``, the best
    candidate; None for seeds).
    """

    row: int
    decision: str
    counterpart: int | None
    probability: float | None
    runner_up: int | None


def alignment_rows(tables: DecisionTables, kgs: torch.Tensor,
                   threshold: float) -> Iterator[AlignmentRow]:
    """Every KG1 entity in row order, then every KG2 entity left without a match, with its
    decision at ``threshold``: lazily, a block of entities at a time."""
    matched = (tables.counterpart >= 0) & ((tables.probability >= threshold) | tables.seed)
    kg1 = torch.nonzero(kgs == 1).squeeze(1)
    kg2_alone = torch.nonzero((kgs == 2) & ~matched).squeeze(1)
    for rows in (kg1, kg2_alone):
        for lo in range(0, len(rows), ROW_BLOCK):
            yield from _block_rows(tables, matched, rows[lo:lo + ROW_BLOCK])


def _block_rows(tables: DecisionTables, matched: torch.Tensor,
                rows: torch.Tensor) -> Iterator[AlignmentRow]:
    columns = zip(rows.tolist(), matched[rows].tolist(), tables.seed[rows].tolist(),
                  tables.counterpart[rows].tolist(), tables.probability[rows].tolist(),
                  tables.runner_up[rows].tolist(), strict=True)
    for row, is_match, is_seed, partner, chance, runner in columns:
        yield entity_row(row, is_match, is_seed, partner, chance, runner)


def decision_of(tables: DecisionTables, row: int, threshold: float) -> AlignmentRow:
    """The decision of the entity at ``row`` at ``threshold``."""
    partner, chance = int(tables.counterpart[row]), float(tables.probability[row])
    is_seed = bool(tables.seed[row])
    return entity_row(row, partner >= 0 and (is_seed or chance >= threshold), is_seed, partner,
                      chance, int(tables.runner_up[row]))


def entity_row(row: int, is_match: bool, is_seed: bool, partner: int, chance: float,
               runner: int) -> AlignmentRow:
    """One entity's :class:`AlignmentRow` from its stored values (``is_match``: its pairing
    reaches the threshold or is a seed)."""
    if is_seed:
        return AlignmentRow(row, SEED, partner, 1.0, None)
    if is_match:
        return AlignmentRow(row, MATCH, partner, chance, _row_or_none(runner))
    if partner >= 0:  # decoded, but below the threshold: the pairing is its best candidate
        return AlignmentRow(row, NO_MATCH, None, chance, partner)
    return AlignmentRow(row, NO_MATCH, None, None, _row_or_none(runner))


def _row_or_none(row: int) -> int | None:
    return row if row >= 0 else None


def alignment_lines(tables: DecisionTables, entities: EntityTable, threshold: float,
                    format_: str) -> Iterator[str]:
    """The alignment file, lazily a line at a time (each ending in a line feed): a header of
    :data:`COLUMNS` then a row per entity for ``tsv``, a JSON object per entity for ``jsonl``
    (see :func:`alignment_rows` for the order and :func:`row_record` for the fields).
    ValueError, at once, for an unknown format."""
    if format_ not in FORMATS:
        raise ValueError(f"unknown format {format_!r}; use one of {', '.join(FORMATS)}")
    return _lines(tables, entities, threshold, format_)


def _lines(tables: DecisionTables, entities: EntityTable, threshold: float,
           format_: str) -> Iterator[str]:
    if format_ == "tsv":
        yield "\t".join(COLUMNS) + "\n"
    for row in alignment_rows(tables, torch.as_tensor(entities.kgs), threshold):
        record = row_record(row, entities)
        if format_ == "jsonl":
            yield json.dumps(record, ensure_ascii=False) + "\n"
        else:
            yield "\t".join("" if record[c] is None else str(record[c]) for c in COLUMNS) + "\n"


def row_record(row: AlignmentRow, entities: EntityTable) -> dict[str, Any]:
    """The fields of one line: entity ids and URIs in place of rows, None where absent, the
    probability to 6 decimals."""
    def named(other: int | None) -> tuple[int | None, str | None]:
        return (None, None) if other is None else (entities.ids[other], entities.uris[other])

    counterpart_id, counterpart_uri = named(row.counterpart)
    runner_up_id, runner_up_uri = named(row.runner_up)
    return {"kg": entities.kgs[row.row], "id": entities.ids[row.row],
            "uri": entities.uris[row.row], "decision": row.decision,
            "counterpart_id": counterpart_id, "counterpart_uri": counterpart_uri,
            "probability": None if row.probability is None else round(row.probability, 6),
            "runner_up_id": runner_up_id, "runner_up_uri": runner_up_uri}
