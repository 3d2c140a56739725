"""Hostile and careless clients against a real server: does the service stay up and fair?

    python -m bench.reliability_api [--checkpoint DIR] [--entities 8000] \
        [--out bench/results/reliability_api.json]

Starts ``python -m mimea.service.cli serve`` on 127.0.0.1 (``bench/server_process.py``) with an API
key and, when one answers, Redis; the checkpoint is ``--checkpoint`` or a synthetic one with
``--entities`` per KG and 3 modalities x 300-d (``bench/checkpoints.py``). Every case is bounded
in requests and seconds and only talks to that server:

- ``oversized_batch``: ``POST /candidates:batch``, 1,024 entities, k=1000, CSLS, while a
  bystander sends single ``GET /candidates`` one after another (``bystanders_during_...``);
- ``largest_allowed_batch`` / ``largest_k_batch``: batches just under the candidate limit
  (1,024 x k=19, 20 x k=1000), same bystander;
- ``unknown_ids_c32``: 2,000 distinct unknown identifiers at concurrency 32 (``bench/loadgen.py``)
  while ``/ready`` is polled (``ready_during_...``), then the same identifiers again
  (``unknown_ids_repeated``);
- ``body_200mb_declared`` / ``body_200mb_chunked``: a 200 MB body with a wrong API key, by
  Content-Length and chunked;
- ``oversized_headers``: one 1 MB header;
- ``half_open_headers``: 2,000 connections that send half a request and stop;
- ``bad_api_key``: 500 requests with a wrong key at concurrency 8.

Each row: case, requests, faults (connection failures and timeouts), outcome, status_codes,
5xx, p99_ms, and case-specific figures. ``faults`` and ``5xx`` should be 0 everywhere.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.checkpoints import build_synthetic
from bench.loadgen import run_load
from bench.server_process import NAMESPACE, Server, flush_namespace, redis_ok

ROOT = Path(__file__).resolve().parents[1]

KEY = "bench-key"
BIG_BODY = 200_000_000
HALF_OPEN = 2000
HALF_OPEN_WAIT_S = 25.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 1)


def _row(case: str, statuses: Counter[int], latencies_ms: list[float], faults: int,
         outcome: str, **extra: Any) -> dict[str, Any]:
    return {"case": case, "requests": sum(statuses.values()) + faults, "faults": faults,
            "outcome": outcome, "status_codes": {str(k): v for k, v in sorted(statuses.items())},
            "5xx": sum(v for k, v in statuses.items() if k >= 500),
            "p99_ms": _percentile(latencies_ms, 99), **extra}


# --------------------------------------------------------------------------------- raw HTTP

def _request(method: str, path: str, body: bytes = b"", key: str = KEY) -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nhost: bench\r\nx-api-key: {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length framed), or (0, b"") on close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        body += chunk
    return int(head[9:12]), body


def _call(port: int, payload: bytes, timeout_s: float) -> tuple[int, bytes, float]:
    """One request on a fresh connection: (status, body, ms); status 0 on failure."""
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(payload)
            status, body = _read_response(sock)
    except OSError:
        status, body = 0, b""
    return status, body, (time.perf_counter() - start) * 1000


class Prober:
    """GET requests on ``paths`` in turn, one after another, ``pause_s`` apart, until stopped:
    what a well-behaved client sees while a hostile one is served."""

    def __init__(self, port: int, paths: list[str], pause_s: float) -> None:
        self.port, self.paths, self.pause_s = port, paths, pause_s
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            status, _, ms = _call(self.port, _request("GET", self.paths[i % len(self.paths)]), 60)
            self.statuses[status] += 1
            self.latencies.append(ms)
            i += 1
            time.sleep(self.pause_s)

    def row(self, case: str, outcome: str) -> dict[str, Any]:
        failed = self.statuses.pop(0, 0)
        return _row(case, self.statuses, self.latencies, failed, outcome,
                    max_ms=round(max(self.latencies, default=0.0), 1))


class PeakRss:
    """The server's largest RSS, sampled every 50 ms while the block runs."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_mb = server.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self.server.rss_mb())


# ------------------------------------------------------------------------------------ cases

def batch_case(server: Server, name: str, entities: list[str], k: int, bystander_uris: list[str],
               redis_url: str | None) -> list[dict[str, Any]]:
    """One big batch with a bystander; RSS, response size and Redis bytes around it."""
    if redis_url:
        flush_namespace(redis_url)
    rss_before = server.rss_mb()
    body = json.dumps({"entities": entities, "k": k, "csls": True}).encode()
    paths = [f"/candidates/{quote(uri, safe='/:')}?k=10&csls={i % 2}"
             for i, uri in enumerate(bystander_uris)]
    with Prober(server.port, paths, 0.02) as bystander, PeakRss(server) as rss:
        time.sleep(0.3)
        status, answer, ms = _call(server.port, _request("POST", "/candidates:batch", body), 300)
        time.sleep(0.3)
    outcome = (f"{len(entities)} x k={k}: {status} in {ms / 1000:.1f} s, "
               f"{len(answer) / 1e6:.1f} MB")
    big = _row(name, Counter({status: 1}) if status else Counter(), [ms], 0 if status else 1,
               outcome, response_mb=round(len(answer) / 1e6, 2),
               rss_mb_before=rss_before, rss_mb_peak=rss.peak_mb,
               redis_mb_written=_redis_mb(redis_url))
    return [big, bystander.row(f"bystanders_during_{name}",
                               "single GET /candidates sent one after another meanwhile")]


def _redis_mb(redis_url: str | None) -> float | None:
    if not redis_url:
        return None
    import redis

    client = redis.Redis.from_url(redis_url)
    total = sum(client.strlen(k) for k in client.scan_iter(match=f"{NAMESPACE}:*", count=5000))
    client.close()
    return round(total / 1e6, 2)


def _typo(uri: str, rng: random.Random) -> str:
    at = rng.randrange(len(uri))
    return uri[:at] + rng.choice("qzjxQZ~") + uri[at + 1:] + f"~{rng.randrange(10**6)}"


def unknown_ids_case(server: Server, uris: list[str]) -> list[dict[str, Any]]:
    """2,000 distinct unknown ids at c=32 with /ready polled; then the same ids again."""
    rng = random.Random(0)
    requests = [_request("GET", f"/candidates/{quote(_typo(rng.choice(uris), rng), safe='/:')}"
                         ).decode() for _ in range(2000)]
    rows = []
    for case in ("unknown_ids_c32", "unknown_ids_repeated"):
        with Prober(server.port, ["/ready"], 0.05) as ready:
            load = run_load(server.port, requests, 32, len(requests), 120)
        statuses = Counter({int(k): v for k, v in load["statuses"].items()})
        statuses[200] += load["requests"] - load["errors"]
        faults = load["errors"] - sum(load["statuses"].values())
        rows.append(_row(case, +statuses, [load["p99_ms"]], faults,
                         f"{load['rps']:.0f} req/s at concurrency 32", rps=load["rps"],
                         p50_ms=round(load["p50_ms"], 1)))
        rows.append(ready.row(f"ready_during_{case}", "GET /ready every 50 ms meanwhile"))
    return rows


def big_body_case(server: Server, chunked: bool) -> dict[str, Any]:
    """200 MB with a wrong key: how much is sent before the answer, and the RSS growth."""
    rss_before = server.rss_mb()
    framing = ("transfer-encoding: chunked" if chunked else f"content-length: {BIG_BODY}")
    head = (f"POST /align HTTP/1.1\r\nhost: bench\r\nx-api-key: wrong\r\n"
            f"content-type: application/json\r\n{framing}\r\n\r\n").encode()
    piece = b"x" * (1 << 20)
    if chunked:
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent, start = 0, time.perf_counter()
    with PeakRss(server) as rss, socket.create_connection(("127.0.0.1", server.port),
                                                          timeout=120) as sock:
        try:
            sock.sendall(head)
            while sent < BIG_BODY and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)  # stop as soon as the server has answered
                sent += 1 << 20
            if chunked and sent >= BIG_BODY:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed while the body was still going
        try:
            status = _read_response(sock)[0]
        except OSError:
            status = 0
    ms = (time.perf_counter() - start) * 1000
    name = "body_200mb_chunked" if chunked else "body_200mb_declared"
    return _row(name, Counter({status: 1}) if status else Counter(), [ms], 0 if status else 1,
                f"{status} after {sent / 1e6:.0f} MB sent, {ms / 1000:.1f} s",
                mb_sent=round(sent / 1e6), rss_mb_before=rss_before, rss_mb_peak=rss.peak_mb)


def oversized_headers_case(server: Server) -> dict[str, Any]:
    payload = (f"GET /health HTTP/1.1\r\nhost: bench\r\nx-filler: {'a' * 1_000_000}\r\n\r\n"
               ).encode()
    status, _, ms = _call(server.port, payload, 30)
    return _row("oversized_headers", Counter({status: 1}) if status else Counter(), [ms],
                0 if status else 1, f"1 MB header: {status or 'connection closed'}")


def half_open_case(server: Server, header_timeout_s: float) -> dict[str, Any]:
    """2,000 connections each send half a request; when does the server close them?"""
    socks = []
    for _ in range(HALF_OPEN):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: bench\r\nx-half: ")
        sock.setblocking(False)
        socks.append(sock)
    status, _, ready_ms = _call(server.port, _request("GET", "/ready"), 30)
    start, closed_at, answers = time.perf_counter(), {}, Counter()
    while len(closed_at) < len(socks) and time.perf_counter() - start < HALF_OPEN_WAIT_S:
        for i, sock in enumerate(socks):
            if i not in closed_at:
                _poll_closed(sock, i, closed_at, answers, start)
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    closed = len(closed_at)
    last = max(closed_at.values(), default=float("nan"))
    outcome = (f"{closed} of {HALF_OPEN} closed by the server, the last after {last:.1f} s "
               f"(header timeout {header_timeout_s:g} s); /ready meanwhile: {status} in "
               f"{ready_ms:.0f} ms" if closed else
               f"none of {HALF_OPEN} closed within {HALF_OPEN_WAIT_S:g} s; /ready meanwhile: "
               f"{status} in {ready_ms:.0f} ms")
    return _row("half_open_headers", answers, [ready_ms], 0, outcome,
                connections=HALF_OPEN, closed_by_server=closed,
                still_open=HALF_OPEN - closed)


def _poll_closed(sock: socket.socket, i: int, closed_at: dict[int, float],
                 answers: Counter[int], start: float) -> None:
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    closed_at[i] = time.perf_counter() - start
    if data.startswith(b"HTTP/1.1 "):
        answers[int(data[9:12])] += 1


def bad_key_case(server: Server) -> dict[str, Any]:
    requests = [_request("GET", "/model", key="wrong").decode()] * 500
    load = run_load(server.port, requests, 8, 500, 60)
    statuses = Counter({int(k): v for k, v in load["statuses"].items()})
    statuses[200] += load["requests"] - load["errors"]
    return _row("bad_api_key", +statuses, [load["p99_ms"]],
                load["errors"] - sum(load["statuses"].values()),
                f"{load['rps']:.0f} req/s at concurrency 8")


# ------------------------------------------------------------------------------------- main

def _uris(checkpoint: Path) -> tuple[list[str], list[str]]:
    rows = (checkpoint / "entities.tsv").read_text(encoding="utf-8").splitlines()
    parsed = [line.split("\t", 2) for line in rows[1:] if line]
    kg1 = [p[2] for p in parsed if p[1] == "1"]
    kg2 = [p[2] for p in parsed if p[1] == "2"]
    return kg1, kg2


def run_all(server: Server, checkpoint: Path, redis_url: str | None,
            header_timeout_s: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    kg1, kg2 = _uris(checkpoint)
    rows: list[dict[str, Any]] = []
    steps: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        ("oversized batch", lambda: batch_case(server, "oversized_batch", kg1[:1024], 1000,
                                               kg2[:len(kg2) // 2], redis_url)),
        ("largest allowed batch", lambda: batch_case(server, "largest_allowed_batch",
                                                     kg1[1024:2048], 19, kg2[len(kg2) // 2:],
                                                     redis_url)),
        ("largest k batch", lambda: batch_case(server, "largest_k_batch", kg1[2048:2068], 1000,
                                               kg1[3000:], redis_url)),
        ("unknown ids", lambda: unknown_ids_case(server, kg1 + kg2)),
        ("200 MB bodies", lambda: [big_body_case(server, False), big_body_case(server, True)]),
        ("oversized headers", lambda: [oversized_headers_case(server)]),
        ("half-open headers", lambda: [half_open_case(server, header_timeout_s)]),
        ("bad API key", lambda: [bad_key_case(server)]),
    ]
    for title, step in steps:
        log(f"case: {title}")
        for row in step():
            log(f"  {row['case']}: {row['outcome']} (p99 {row['p99_ms']} ms)")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--entities", type=int, default=8000, help="per KG, synthetic only")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "reliability_api.json")
    args = parser.parse_args(argv)
    header_timeout_s = 10.0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or build_synthetic(Path(tmp) / "synthetic", args.entities,
                                                        args.entities)
        redis_url = args.redis_url if redis_ok(args.redis_url) else None
        env = {"MIMEA_API_KEY": KEY, "MIMEA_REDIS_URL": redis_url or "",
               "MIMEA_CACHE_NAMESPACE": NAMESPACE}
        server = Server(checkpoint, Path(tmp) / "server.log", env)
        try:
            rows = run_all(server, checkpoint, redis_url, header_timeout_s,
                           lambda line: print(line, flush=True))
        finally:
            server.stop()
            if redis_url:
                flush_namespace(redis_url)
    result = {"checkpoint": str(args.checkpoint or f"synthetic {args.entities} + "
                                f"{args.entities} entities, 3 modalities x 300-d"),
              "redis": redis_url is not None, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(r["5xx"] == 0 and r["faults"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
