"""Dependencies, declared once as ``Annotated`` aliases.

They are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, a
thread hop per request that the hot path does not need. A keyed route has one dependency, the
service behind the key check: every dependency FastAPI solves costs each request tens of
microseconds of the event loop.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from mimea.service.errors import ServiceError
from mimea.service.serving import AlignmentService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Required when the service sets MIMEA_API_KEY.")


async def get_service(request: Request) -> AlignmentService:
    return request.app.state.service


async def authorised_service(request: Request,
                             key: Annotated[str | None, Security(api_key_header)]
                             ) -> AlignmentService:
    """The service, for a request with the right X-API-Key or when no key is configured;
    401 otherwise (constant-time compare)."""
    expected = request.app.state.settings.api_key
    if expected is not None and (key is None or not secrets.compare_digest(
            key.encode(), expected.get_secret_value().encode())):
        raise ServiceError(401, "unauthorized",
                           "missing X-API-Key header" if key is None else "wrong X-API-Key")
    return request.app.state.service


ServiceDep = Annotated[AlignmentService, Depends(get_service)]
KeyedServiceDep = Annotated[AlignmentService, Depends(authorised_service)]
