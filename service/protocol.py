"""uvicorn's httptools protocol with a deadline and a size limit on a request's headers.

uvicorn bounds the idle time between requests on a keep-alive connection, but not the time a
client takes to send a request's headers, nor (with httptools) their size: a client that opens
connections and sends half a request line holds each of them open indefinitely. Here a
connection must complete a request's headers within ``header_timeout_s`` of connecting, or of
sending the request's first byte after a previous response, and within ``max_header_bytes``;
otherwise it is answered 408 or 431 (the service's error envelope) and closed.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _refusal(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n", body])


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses slow or oversized request headers."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024

    _deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _tail = b""  # the last bytes of the previous read: the blank line may straddle two

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()  # the first bytes of the next request on this connection
        if self._deadline is not None and not self._headers_end_within_limit(data):
            self._header_bytes += len(data)
            self._tail = data[-3:]
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, "headers_too_large", f"request headers larger than "
                             f"{self.max_header_bytes} bytes (MIMEA_MAX_HEADER_BYTES)")
                return  # refused before the parser sees it
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        super().on_headers_complete()

    def _headers_end_within_limit(self, data: bytes) -> bool:
        """Whether the blank line ending the headers is in ``data`` within the limit."""
        room = self.max_header_bytes - self._header_bytes
        return (self._tail + data).find(b"\r\n\r\n", 0, len(self._tail) + max(0, room)) >= 0

    def _await_headers(self) -> None:
        self._header_bytes, self._tail = 0, b""
        self._deadline = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._refuse(408, "header_timeout",
                     f"request headers not received within {self.header_timeout_s:g} s "
                     f"(MIMEA_HEADER_TIMEOUT_S)")

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._stop_deadline()
        if not self.transport.is_closing():
            self.transport.write(_refusal(status, code, message))
            self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int
                     ) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to hand to uvicorn (``http=``), with these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes})
