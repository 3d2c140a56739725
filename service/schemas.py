"""Request and response models (the API's protocol, documented in OpenAPI).

Responses are serialised once by the serving layer and returned as bytes; these models are the
documented contract, and the tests validate every response against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000
MAX_BATCH = 1024
MAX_ID_LENGTH = 4096

EntityId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH,
                                description="The KG's own identifier (URI or Freebase mid).")]
KValue = Annotated[int, Field(ge=1, le=MAX_K, description="Number of candidates.")]
KG = Annotated[int, Field(ge=1, le=2, description="Knowledge graph: 1 or 2.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(BaseModel):
    entity: str
    kg: KG
    rank: int = Field(ge=1, description="1-based position in this list.")
    score: float = Field(description="The ranking score: csls if requested, else cosine.")
    cosine: float
    csls: float = Field(description="2 cos - r(source) - r(candidate).")
    modality_similarity: dict[str, float | None] = Field(
        description="Cosine per modality; null when the modality is missing in either entity.")


class CandidatesResponse(BaseModel):
    entity: str
    kg: KG = Field(description="The KG of the queried entity.")
    target_kg: KG = Field(description="The KG the candidates come from.")
    k: int
    metric: Literal["cosine", "csls"]
    candidates: list[Candidate]


class CandidatesBatchRequest(_Request):
    entities: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    k: KValue = 10
    csls: bool = Field(False, description="Re-rank a cosine pool of max(4k, 50) by CSLS.")


class CandidatesBatchResponse(BaseModel):
    results: list[CandidatesResponse]


class AlignRequest(_Request):
    source: EntityId
    target: EntityId


class AlignBatchRequest(_Request):
    pairs: list[AlignRequest] = Field(min_length=1, max_length=MAX_BATCH)


class EntityRef(BaseModel):
    entity: str
    kg: KG


class Ranks(BaseModel):
    cosine: int = Field(ge=1, description="1 + entities scoring strictly higher by cosine.")
    csls: int = Field(ge=1, description="1 + entities scoring strictly higher by CSLS.")


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
    target_rank: Ranks = Field(description="Rank of the target among the source's candidates.")
    source_rank: Ranks = Field(description="Rank of the source among the target's candidates.")
    mutual_nearest: bool = Field(description="Each is the other's top-1 by cosine.")
    confidence: float = Field(
        ge=0.0, le=1.0,
        description="sqrt(p(t|s) p(s|t)), p = softmax of cosine / temperature over the KG.")
    modalities: ModalityBreakdown


class AlignBatchResponse(BaseModel):
    results: list[AlignResponse]


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
    search_precision: Literal["float32", "bfloat16"] = Field(
        description="What a search scans: the vectors, or their bfloat16 copy (its shortlist "
                    "rescored in float32).")
    device: str
    csls_k: int


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class CacheStatus(BaseModel):
    backend: Literal["memory", "redis"]
    status: Literal["ok", "degraded", "disabled"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model_version: str
    cache: CacheStatus
