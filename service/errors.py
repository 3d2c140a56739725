"""One error envelope for every failure: ``{"error": {"code": ..., "message": ..., "details"}}``.

Handlers turn our ``ServiceError``s, request validation errors, Starlette HTTP errors (unknown
route, wrong method) and, as a last resort, any exception into that envelope, so clients parse one
shape whatever went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_MAX_SHOWN = 200  # characters of a client-sent identifier echoed back in a message


class StartupError(RuntimeError):
    """The service cannot start (bad settings, unavailable device, no checkpoint)."""


class ServiceError(Exception):
    """A client-facing error with an HTTP status and a stable code."""

    def __init__(self, status_code: int, code: str, message: str,
                 details: dict[str, Any] | list[Any] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


class EntityNotFound(ServiceError):
    """An identifier that is in neither KG; carries close identifiers as suggestions."""

    def __init__(self, entity: str, suggestions: list[str]) -> None:
        shown = entity if len(entity) <= _MAX_SHOWN else entity[:_MAX_SHOWN] + "..."
        message = f"unknown entity {shown!r}"
        if suggestions:
            message += "; did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        super().__init__(404, "entity_not_found", message,
                         {"entity": shown, "suggestions": suggestions})


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. entity_not_found.")
    message: str = Field(description="Human-readable explanation.")
    details: dict[str, Any] | list[Any] | None = None


class ErrorResponse(BaseModel):
    """The envelope of every error response."""

    error: ErrorBody


def error_response(status_code: int, code: str, message: str,
                   details: dict[str, Any] | list[Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=headers)


# Declared on routes so OpenAPI documents the envelope.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key."},
    404: {"model": ErrorResponse, "description": "Unknown entity."},
    413: {"model": ErrorResponse, "description": "Request body over MIMEA_MAX_BODY_BYTES."},
    422: {"model": ErrorResponse,
          "description": "Malformed body, out-of-range parameter, more candidates asked for "
                         "(entities x k) than MIMEA_MAX_REQUEST_CANDIDATES, or a metric the "
                         "checkpoint cannot serve."},
}

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "APIKey"} if exc.status_code == 401 else None
    return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Keep loc/msg/type only: echoing the input could return megabytes or unserialisable values.
    details = [{"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg")),
                "type": str(err.get("type"))} for err in exc.errors()]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]) or "invalid"
    return error_response(422, "validation_error", message, details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None,
                          dict(exc.headers) if exc.headers else None)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the envelope."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
