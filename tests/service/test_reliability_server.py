"""Wire limits on a real uvicorn server: slow or oversized headers, oversized bodies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from bench.server_process import Server

pytestmark = pytest.mark.slow  # starts a server process

HEADER_TIMEOUT_S = 1.0
HALF_OPEN = 50


@pytest.fixture(scope="module")
def server(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = Server(synthetic.path, log, {
        "MIMEA_REDIS_URL": "", "MIMEA_THREADS": "1", "MIMEA_API_KEY": "k",
        "MIMEA_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "MIMEA_MAX_HEADER_BYTES": "8192",
        "MIMEA_MAX_BODY_BYTES": "65536"}, startup_s=60)
    try:
        yield process
    finally:
        process.stop()


def _response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response the server sends before closing."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), json.loads(body)


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nhost: x\r\nx-half: ",
                                  b"POST /align HTT"])
def test_half_sent_headers_are_answered_408_and_closed(server: Server, sent: bytes) -> None:
    socks = [_connect(server) for _ in range(HALF_OPEN)]
    for sock in socks:
        sock.sendall(sent)
    start = time.monotonic()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # others go on
    for sock in socks:
        status, body = _response(sock)
        assert status == 408 and body["error"]["code"] == "header_timeout"
        sock.close()
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 5


def test_keep_alive_connection_gets_a_fresh_deadline_per_request(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        for _ in range(3):  # three requests, the whole exchange longer than the header timeout
            assert client.get("/health").status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 0.6)


def test_slow_body_after_complete_headers_is_not_cut_by_the_header_timeout(
        server: Server) -> None:
    body = json.dumps({"source": "/m/0abc000", "target": "nope"}).encode()
    with _connect(server) as sock:
        sock.sendall(b"POST /align HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n" % len(body))
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        sock.sendall(body)
        status, answer = _response(sock)
    assert status == 404 and answer["error"]["code"] == "entity_not_found"


def test_oversized_headers_are_answered_431(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 100_000
                     + b"\r\n\r\n")
        status, body = _response(sock)
    assert status == 431 and body["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize("framing,chunks", [(b"content-length: 200000000", 0),
                                            (b"transfer-encoding: chunked", 5)])
def test_huge_body_is_refused_413_before_the_api_key(server: Server, framing: bytes,
                                                     chunks: int) -> None:
    """A wrong key and a body announced as 200 MB (or streamed past the limit): 413, never
    401, with no more than the limit read. The client stops sending past the limit, so the
    server's close does not reset the connection before the answer is read."""
    with _connect(server) as sock:
        sock.sendall(b"POST /align HTTP/1.1\r\nhost: x\r\nx-api-key: wrong\r\n"
                     b"content-type: application/json\r\n" + framing + b"\r\n\r\n")
        for _ in range(chunks):  # 5 x 16 KiB: past the 64 KiB limit
            sock.sendall(b"4000\r\n" + b"x" * 16384 + b"\r\n")
        status, body = _response(sock)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert "65536 bytes" in body["error"]["message"]
