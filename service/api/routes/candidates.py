"""``GET /candidates/{entity}`` and ``POST /candidates:batch``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from mimea.service.api.deps import KeyedServiceDep
from mimea.service.errors import ERROR_RESPONSES
from mimea.service.schemas import (
    CSLS_HELP,
    MAX_K,
    METRIC_HELP,
    CandidatesBatchRequest,
    CandidatesBatchResponse,
    CandidatesResponse,
    Metric,
)

router = APIRouter(tags=["candidates"], responses=ERROR_RESPONSES)

_JSON = "application/json"


@router.get("/candidates/{entity:path}", response_model=CandidatesResponse,
            summary="Top-k entities of the other KG for one entity")
async def candidates(
    service: KeyedServiceDep,
    entity: Annotated[str, Path(description="The entity's URI or mid; slashes allowed.")],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of candidates.")] = 10,
    metric: Annotated[Metric | None, Query(description=METRIC_HELP)] = None,
    csls: Annotated[bool | None, Query(description=CSLS_HELP, deprecated=True)] = None,
) -> Response:
    ranking = service.ranking(metric, csls)
    return Response(await service.candidates(entity, k, ranking), media_type=_JSON)


@router.post("/candidates:batch", response_model=CandidatesBatchResponse,
             summary="Candidates for many entities with one index search")
async def candidates_batch(service: KeyedServiceDep, body: CandidatesBatchRequest) -> Response:
    ranking = service.ranking(body.metric, body.csls)
    return Response(await service.candidates_batch(body.entities, body.k, ranking),
                    media_type=_JSON)
