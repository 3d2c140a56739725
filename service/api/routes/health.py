"""``/health``, ``/ready`` and ``/metrics``: open to probes and scrapers (no API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mimea.service.api.deps import ServiceDep
from mimea.service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=HealthResponse, summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=ReadyResponse,
            summary="The model is loaded; cache backend and status (ok or degraded)")
async def ready(service: ServiceDep) -> dict[str, Any]:
    return await service.ready()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    return request.app.state.metrics.render()
