"""A request body limit, as plain ASGI middleware in front of routing and authentication.

A declared ``Content-Length`` over the limit is answered 413 before a byte of the body is read
(so a 200 MB upload costs nothing, and is refused before its API key is even looked at); a
body without one (chunked) is counted as it streams and cut off with 413 when it passes the
limit, so it is never held whole in memory either.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mimea.service.errors import error_response


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes (MIMEA_MAX_BODY_BYTES)"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit.

    An HTTPException, so FastAPI's body reader lets it through to the error handlers (it turns
    other exceptions into a 400), which answer it with the envelope.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit), headers={"Connection": "close"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server rejects a malformed length itself
    return None


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            # Connection: close, since the unread body would otherwise be parsed as a request.
            response = error_response(413, "payload_too_large", _too_large(self.max_bytes),
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return counted
