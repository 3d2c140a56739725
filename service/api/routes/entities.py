"""``GET /entities``: look identifiers up by prefix."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from mimea.service.api.deps import KeyedServiceDep
from mimea.service.errors import ERROR_RESPONSES
from mimea.service.schemas import MAX_ID_LENGTH, EntitiesResponse

router = APIRouter(tags=["entities"], responses=ERROR_RESPONSES)


@router.get("/entities", response_model=EntitiesResponse,
            summary="Entities whose identifier starts with a prefix, sorted")
async def entities(
    service: KeyedServiceDep,
    kg: Annotated[int | None, Query(ge=1, le=2, description="Only this KG.")] = None,
    prefix: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    return service.entities(kg, prefix, limit)
