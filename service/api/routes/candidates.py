"""``GET /candidates/{entity}`` and ``POST /candidates:batch``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from service.api.deps import ApiKeyDep, ServiceDep
from service.errors import ERROR_RESPONSES
from service.schemas import (
    MAX_K,
    CandidatesBatchRequest,
    CandidatesBatchResponse,
    CandidatesResponse,
)

router = APIRouter(tags=["candidates"], dependencies=[ApiKeyDep], responses=ERROR_RESPONSES)

_JSON = "application/json"


@router.get("/candidates/{entity:path}", response_model=CandidatesResponse,
            summary="Top-k entities of the other KG for one entity")
async def candidates(
    service: ServiceDep,
    entity: Annotated[str, Path(description="The entity's URI or mid; slashes allowed.")],
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of candidates.")] = 10,
    csls: Annotated[bool, Query(description="Re-rank a cosine pool of max(4k, 50) by CSLS.")
                    ] = False,
) -> Response:
    return Response(await service.candidates(entity, k, csls), media_type=_JSON)


@router.post("/candidates:batch", response_model=CandidatesBatchResponse,
             summary="Candidates for many entities with one index search")
async def candidates_batch(service: ServiceDep, body: CandidatesBatchRequest) -> Response:
    return Response(await service.candidates_batch(body.entities, body.k, body.csls),
                    media_type=_JSON)
