"""``GET /alignment/{entity}``, ``POST /alignment:batch`` and the streamed ``GET /alignment``:
the decided alignment the checkpoint stores (match with a probability, seed, or no match)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response, StreamingResponse

from mimea.service.api.deps import KeyedServiceDep
from mimea.service.errors import ERROR_RESPONSES
from mimea.service.schemas import (
    THRESHOLD_HELP,
    AlignmentBatchRequest,
    AlignmentBatchResponse,
    AlignmentDecision,
    Decision,
)

router = APIRouter(tags=["alignment"], responses=ERROR_RESPONSES)

_JSON = "application/json"
_JSON_LINES = "application/x-ndjson"
_STREAM_FIELDS = ("One JSON object per line, the lines of `mimea align --format jsonl`: kg, id, "
                  "uri, decision, counterpart_id, counterpart_uri, probability, runner_up_id, "
                  "runner_up_uri. Every KG1 entity first, then the KG2 entities left without a "
                  "match.")

MinProbability = Annotated[float | None, Query(ge=0.0, le=1.0, description=THRESHOLD_HELP)]


@router.get("/alignment", response_class=StreamingResponse,
            summary="The whole decided alignment, streamed as JSON Lines",
            description=_STREAM_FIELDS,
            responses={200: {"content": {_JSON_LINES: {}}, "description": _STREAM_FIELDS}})
async def alignment_stream(
    service: KeyedServiceDep,
    decision: Annotated[list[Decision] | None, Query(
        description="Only entities with these decisions (repeat the parameter for several).")
    ] = None,
    min_probability: MinProbability = None,
    kg: Annotated[int | None, Query(ge=1, le=2, description="Only this KG's entities.")] = None,
) -> StreamingResponse:
    lines = service.alignment_stream(min_probability, decision, kg)
    return StreamingResponse(lines, media_type=_JSON_LINES)


@router.get("/alignment/{entity:path}", response_model=AlignmentDecision,
            summary="One entity's decision: its counterpart with a probability, or no match")
async def alignment(
    service: KeyedServiceDep,
    entity: Annotated[str, Path(description="The entity's URI or mid; slashes allowed.")],
    min_probability: MinProbability = None,
) -> Response:
    return Response(await service.alignment(entity, min_probability), media_type=_JSON)


@router.post("/alignment:batch", response_model=AlignmentBatchResponse,
             summary="Decisions of many entities; an unknown one is answered by its error")
async def alignment_batch(service: KeyedServiceDep, body: AlignmentBatchRequest) -> Response:
    return Response(await service.alignment_batch(body.entities, body.min_probability),
                    media_type=_JSON)
