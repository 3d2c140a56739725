"""HTTP load generator for the serving bench.

Closed-loop raw HTTP/1.1 keep-alive over asyncio streams (uvloop when installed): far cheaper per
request than a general client, so on a 2-core machine it measures the server, not itself. It runs
in its own process: ``python bench/loadgen.py`` reads a spec as JSON on stdin and writes the
measurements as JSON on stdout. Any non-200 answer or connection failure counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _one_pass(spec: dict[str, Any], payloads: list[bytes]) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` keep-alive connections pull from one request list."""
    host, port = spec["host"], spec["port"]
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    cursor = 0
    total = spec["max_requests"]
    cycle = bool(spec.get("cycle"))
    deadline = time.perf_counter() + spec["max_seconds"]

    def next_request() -> bytes | None:
        nonlocal cursor
        i = cursor
        if i >= total or (not cycle and i >= len(payloads)) or time.perf_counter() >= deadline:
            return None
        cursor = i + 1
        return payloads[i % len(payloads)]

    async def worker() -> None:
        nonlocal errors
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while (payload := next_request()) is not None:
            start = time.perf_counter()
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                lower = head.lower()
                at = lower.find(b"content-length:")
                if at < 0:
                    raise ValueError("response without content-length")
                await reader.readexactly(int(lower[at + 15:lower.find(b"\r\n", at)]))
            except (OSError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors += 1
                statuses[status] = statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    elapsed = time.perf_counter() - began
    ms = [x * 1000 for x in latencies]
    failed = errors - sum(statuses.values())  # connection-level failures have no latency
    return {"requests": len(latencies) + failed, "errors": errors, "statuses": statuses,
            "seconds": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(_percentile(ms, 50), 3), "p95_ms": round(_percentile(ms, 95), 3),
            "p99_ms": round(_percentile(ms, 99), 3)}


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``passes`` passes over the request list and report the last one."""
    payloads = [r.encode("latin-1") for r in spec["requests"]]
    result: dict[str, Any] = {}
    for _ in range(spec.get("passes", 1)):
        result = await _one_pass(spec, payloads)
    return result


def drive_main() -> None:
    """Entry of the load process: spec JSON on stdin, result JSON on stdout."""
    spec = json.load(sys.stdin)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        runner = asyncio.run
    json.dump(runner(_drive(spec)), sys.stdout)


def _command() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def start_load(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a load process on ``spec`` without waiting; its stdout carries the result JSON."""
    proc = subprocess.Popen(_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    return proc


def run_load(port: int, requests: list[str], concurrency: int, max_requests: int,
             max_seconds: float, *, passes: int = 1, cycle: bool = False) -> dict[str, Any]:
    """Run one load in a separate process and return its measurements."""
    spec = {"host": "127.0.0.1", "port": port, "requests": requests, "concurrency": concurrency,
            "max_requests": max_requests, "max_seconds": max_seconds, "passes": passes,
            "cycle": cycle}
    proc = subprocess.run(_command(), input=json.dumps(spec), capture_output=True, text=True,
                          timeout=max_seconds * passes + 120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load process failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def get_request(uri: str, k: int = 10, metric: str | None = None) -> str:
    ranking = f"&metric={metric}" if metric else ""
    return (f"GET /candidates/{quote(uri, safe='/:')}?k={k}{ranking} HTTP/1.1\r\n"
            f"host: bench\r\n\r\n")


def post_align(source: str, target: str) -> str:
    body = json.dumps({"source": source, "target": target}, ensure_ascii=True)
    return (f"POST /align HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n{body}")


if __name__ == "__main__":
    drive_main()
