"""``POST /align`` and ``POST /align:batch``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from mimea.service.api.deps import KeyedServiceDep
from mimea.service.errors import ERROR_RESPONSES
from mimea.service.schemas import AlignBatchRequest, AlignBatchResponse, AlignRequest, AlignResponse

router = APIRouter(tags=["align"], responses=ERROR_RESPONSES)

_JSON = "application/json"


@router.post("/align", response_model=AlignResponse,
             summary="Score one (source, target) pair; KGs in either order, not the same KG")
async def align(service: KeyedServiceDep, body: AlignRequest) -> Response:
    return Response(await service.align(body.source, body.target), media_type=_JSON)


@router.post("/align:batch", response_model=AlignBatchResponse,
             summary="Score many pairs with one batched computation")
async def align_batch(service: KeyedServiceDep, body: AlignBatchRequest) -> Response:
    pairs = [(p.source, p.target) for p in body.pairs]
    return Response(await service.align_batch(pairs), media_type=_JSON)
