"""Dependencies, declared once as ``Annotated`` aliases.

They are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, a
thread hop per request that the hot path does not need.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ServiceError
from service.serving import AlignmentService
from service.settings import Settings

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Required when the service sets MIMEA_API_KEY.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> AlignmentService:
    return request.app.state.service


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[AlignmentService, Depends(get_service)]


async def require_api_key(settings: SettingsDep,
                          key: Annotated[str | None, Security(api_key_header)]) -> None:
    """401 unless no key is configured or the header matches it (constant-time compare)."""
    expected = settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(),
                                                 expected.get_secret_value().encode()):
        raise ServiceError(401, "unauthorized",
                           "missing X-API-Key header" if key is None else "wrong X-API-Key")


ApiKeyDep = Depends(require_api_key)
