"""Request and response models (the API's protocol, documented in OpenAPI).

Responses are serialised once by the serving layer and returned as bytes; these models are the
documented contract, and the tests validate every response against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mimea.model.ranking import Ranking
from mimea.service.errors import ErrorBody

MAX_K = 1000
MAX_BATCH = 1024
MAX_ID_LENGTH = 4096

EntityId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH,
                                description="The KG's own identifier (URI or Freebase mid).")]
KValue = Annotated[int, Field(ge=1, le=MAX_K, description="Number of candidates.")]
KG = Annotated[int, Field(ge=1, le=2, description="Knowledge graph: 1 or 2.")]
Metric = Ranking  # cosine, csls or sinkhorn (model.ranking)
METRIC_HELP = ("Ranking: cosine, csls, or sinkhorn (CSLS plus the potentials of the one-to-one "
               "plan over both KGs, the checkpoint's evaluated ranking). Default: the model's "
               "(GET /model); sinkhorn needs a checkpoint that stores the plan's terms.")
CSLS_HELP = "Deprecated: use metric. true is metric=csls, false is metric=cosine."
SINKHORN_HELP = ("log of the share of the source's plan mass on this entity: log n + log u_s + "
                 "log v_t + CSLS / reg (n: the size of the source's KG); null without a plan.")
PROBABILITY_HELP = ("The share of the source's plan mass on this entity, exp(sinkhorn) clipped "
                    "to [0, 1]; null when the checkpoint has no plan.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(BaseModel):
    entity: str
    kg: KG
    rank: int = Field(ge=1, description="1-based position in this list.")
    score: float = Field(description="The ranking's score: the cosine, the csls, or the "
                                     "sinkhorn log plan share (see the align response).")
    cosine: float
    csls: float = Field(description="2 cos - r(source) - r(candidate).")
    probability: float | None = Field(ge=0.0, le=1.0, description=PROBABILITY_HELP)
    modality_similarity: dict[str, float | None] = Field(
        description="Cosine per modality; null when the modality is missing in either entity.")


class CandidatesResponse(BaseModel):
    entity: str
    kg: KG = Field(description="The KG of the queried entity.")
    target_kg: KG = Field(description="The KG the candidates come from.")
    k: int
    metric: Metric = Field(description="The ranking of this list.")
    candidates: list[Candidate]


class CandidatesBatchRequest(_Request):
    entities: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    k: KValue = 10
    metric: Metric | None = Field(None, description=METRIC_HELP)
    csls: bool | None = Field(None, description=CSLS_HELP, json_schema_extra={"deprecated": True})


class BatchItemError(BaseModel):
    """One item of a batch that could not be answered (the other items are answered)."""

    error: ErrorBody


class CandidatesBatchResponse(BaseModel):
    results: list[CandidatesResponse | BatchItemError] = Field(
        description="One per entity, in order: its candidates, or the error the single route "
                    "would have answered (e.g. entity_not_found).")


class AlignRequest(_Request):
    source: EntityId
    target: EntityId


class AlignBatchRequest(_Request):
    pairs: list[AlignRequest] = Field(min_length=1, max_length=MAX_BATCH)


class EntityRef(BaseModel):
    entity: str
    kg: KG


class Ranks(BaseModel):
    """Exact ranks over every entity of the other KG: 1 + those scoring strictly higher."""

    cosine: int = Field(ge=1)
    csls: int = Field(ge=1)
    sinkhorn: int | None = Field(ge=1, description="Null when the checkpoint has no plan.")


class ModalityBreakdown(BaseModel):
    similarity: dict[str, float | None] = Field(
        description="Cosine per modality; null when missing in either entity.")
    source_weights: dict[str, float] = Field(description="Source's fusion weight per modality.")
    target_weights: dict[str, float] = Field(description="Target's fusion weight per modality.")
    source_missing: list[str]
    target_missing: list[str]


class AlignResponse(BaseModel):
    source: EntityRef
    target: EntityRef
    cosine: float
    csls: float
    sinkhorn: float | None = Field(description=SINKHORN_HELP)
    probability: float | None = Field(ge=0.0, le=1.0, description=PROBABILITY_HELP)
    match_probability: float | None = Field(
        ge=0.0, le=1.0, description="Calibrated probability that the two are the same entity "
        "(GET /alignment/{entity} for the decoder's pairings; any other pair scored by the same "
        "calibration, at most what the two entities' own pairings leave); null when the "
        "checkpoint stores no decisions.")
    target_rank: Ranks = Field(description="Rank of the target among the source's candidates.")
    source_rank: Ranks = Field(description="Rank of the source among the target's candidates.")
    mutual_nearest: bool = Field(description="Each is the other's top-1 by the model's default "
                                             "metric.")
    modalities: ModalityBreakdown


class AlignBatchResponse(BaseModel):
    results: list[AlignResponse | BatchItemError] = Field(
        description="One per pair, in order: its scores, or the error the single route would "
                    "have answered (entity_not_found, same_kg).")


Decision = Literal["match", "seed", "no_match"]
THRESHOLD_HELP = ("Probability a decoded pairing needs to be a match. Default: the checkpoint's "
                  "threshold (GET /model decision_threshold).")


class AlignmentDecision(BaseModel):
    entity: str
    kg: KG
    decision: Decision = Field(description="match: decided at this threshold; seed: a "
                                           "labelled pair; no_match: no counterpart.")
    counterpart: str | None = Field(description="The entity of the other KG it is; null for "
                                                "no_match.")
    probability: float | None = Field(
        ge=0.0, le=1.0, description="Calibrated probability of the decoder's pairing (1 for "
        "a seed); for no_match, that of the pairing the threshold rejected, null when the "
        "decoder paired it with nothing.")
    threshold: float = Field(ge=0.0, le=1.0, description="The threshold applied.")
    runner_up: str | None = Field(description="Best candidate other than the counterpart (for "
                                              "no_match: the best candidate); null for seeds.")
    compared_with: str | None = Field(description="The entity modality_similarity compares "
                                                  "with: the counterpart, else the runner-up.")
    modality_similarity: dict[str, float | None] = Field(
        description="Cosine per modality with compared_with; null where either lacks it.")


class AlignmentBatchRequest(_Request):
    entities: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    min_probability: float | None = Field(None, ge=0.0, le=1.0, description=THRESHOLD_HELP)


class AlignmentBatchResponse(BaseModel):
    results: list[AlignmentDecision | BatchItemError]


class EntityItem(BaseModel):
    entity: str
    kg: KG
    id: int = Field(description="The entity's id in the checkpoint's entity table.")


class EntitiesResponse(BaseModel):
    entities: list[EntityItem]
    has_more: bool


class ModelInfo(BaseModel):
    model_version: str
    modalities: list[str]
    embedding_dims: dict[str, int]
    entities: dict[str, int]
    metrics: dict[str, Any]
    index: Literal["flat", "hnsw", "ivf"]
    index_on_gpu: bool
    search_precision: Literal["float32", "bfloat16", "int8"] = Field(
        description="What a search scans: the vectors, or their bfloat16 or int8 copy (its "
                    "shortlist rescored in float32).")
    device: str
    csls_k: int
    default_metric: Metric = Field(description="The ranking of requests that name none: the "
                                               "checkpoint's headline ranking when served.")
    available_metrics: list[Metric]
    sinkhorn_reg: float | None = Field(description="Entropy of the plan; null without one.")
    decision_threshold: float | None = Field(
        description="Default probability a pairing needs to be a match (chosen on validation "
                    "pairs for the stated precision); null when no decisions are stored.")
    decision_precision: float | None = Field(
        description="The precision the default threshold was chosen for.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class CacheStatus(BaseModel):
    backend: Literal["memory", "redis"]
    status: Literal["ok", "degraded", "disabled"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model_version: str
    cache: CacheStatus
