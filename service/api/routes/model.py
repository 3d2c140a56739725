"""``GET /model``: what is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mimea.service.api.deps import KeyedServiceDep
from mimea.service.errors import ERROR_RESPONSES
from mimea.service.schemas import ModelInfo

router = APIRouter(tags=["model"], responses=ERROR_RESPONSES)


@router.get("/model", response_model=ModelInfo,
            summary="Model version, metrics, modalities and sizes")
async def model_info(service: KeyedServiceDep) -> dict[str, Any]:
    return service.aligner.info()
