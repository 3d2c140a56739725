"""Load runs against a started server: the route x cache x concurrency matrix, and the soak."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench.loadgen import get_request, post_align, run_load, start_load
from bench.server_process import Server, flush_namespace


def request_sets(uris: list[str], kgs: list[int], route: str, cache: str, count: int,
                 rng: random.Random) -> list[str]:
    """Seeded request lines; distinct entities/pairs for cold and warm so the first pass misses."""
    kg1 = [i for i, k in enumerate(kgs) if k == 1]
    kg2 = [i for i, k in enumerate(kgs) if k == 2]
    if route == "candidates":
        rows = (rng.sample(range(len(uris)), min(count, len(uris))) if cache != "off"
                else [rng.randrange(len(uris)) for _ in range(count)])
        return [get_request(uris[r]) for r in rows]
    out = []
    seen: set[tuple[int, int]] = set()
    while len(out) < count:
        s, t = rng.choice(kg1), rng.choice(kg2)
        if rng.random() < 0.5:
            s, t = t, s
        if cache != "off" and (s, t) in seen:
            continue
        seen.add((s, t))
        out.append(post_align(uris[s], uris[t]))
    return out


def run_matrix(server: Server, routes: list[str], caches: list[str], uris: list[str],
               kgs: list[int], plan: dict[str, dict[int, int]], max_seconds: float,
               redis_url: str | None, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for route in routes:
        for cache in caches:
            for concurrency, count in plan[route].items():
                requests = request_sets(uris, kgs, route, cache, count, rng)
                if cache != "off" and redis_url:
                    flush_namespace(redis_url)
                passes = 2 if cache == "warm" else 1
                # the warm pass must hold the whole set, so its first pass is not time-bounded
                seconds = max_seconds if cache != "warm" else max_seconds * 4
                res = run_load(server.port, requests, concurrency, count, seconds,
                               passes=passes)
                row = {"route": route, "cache": cache, "concurrency": concurrency,
                       "requests": res["requests"], "errors": res["errors"], "rps": res["rps"],
                       "p50_ms": res["p50_ms"], "p95_ms": res["p95_ms"],
                       "p99_ms": res["p99_ms"], "rss_mb": server.rss_mb(),
                       "seconds": res["seconds"]}
                if res["statuses"]:
                    row["statuses"] = res["statuses"]
                rows.append(row)
                print(f"  {route:10} cache={cache:4} c={concurrency:<3} {row['requests']:>6} req "
                      f"{row['rps']:>8.1f} req/s  p50 {row['p50_ms']:.2f}  p95 "
                      f"{row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}"
                      f"  rss {row['rss_mb']} MB", flush=True)
    return rows


def soak(server: Server, uris: list[str], kgs: list[int], seconds: float, every: float,
         rng: random.Random) -> dict[str, Any]:
    """Mixed candidates/align load at concurrency 8 while sampling the server's RSS."""
    cand = request_sets(uris, kgs, "candidates", "off", 5000, rng)
    align = request_sets(uris, kgs, "align", "off", 5000, rng)
    mixed = [r for pair in zip(cand, align, strict=True) for r in (pair[0], pair[0], pair[1])]
    spec = {"host": "127.0.0.1", "port": server.port, "requests": mixed, "concurrency": 8,
            "max_requests": 10**9, "max_seconds": seconds, "passes": 1, "cycle": True}
    proc = start_load(spec)
    samples = []
    start = time.monotonic()
    while proc.poll() is None:
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": server.rss_mb()})
        time.sleep(every)
    assert proc.stdout is not None
    res = json.loads(proc.stdout.read())
    samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": server.rss_mb()})
    values = [s["rss_mb"] for s in samples]
    return {"seconds": seconds, "concurrency": 8, "mix": "2 candidates : 1 align, cache off",
            "requests": res["requests"], "errors": res["errors"], "rps": res["rps"],
            "p99_ms": res["p99_ms"], "samples": samples,
            "rss_growth_mb": round(values[-1] - values[1 if len(values) > 2 else 0], 1),
            "rss_range_mb": round(max(values) - min(values), 1)}
