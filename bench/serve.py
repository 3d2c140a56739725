"""Serving benchmark: a real uvicorn server under load, the raw index floor, and index scaling.

    python -m bench.serve [--checkpoint DIR] [--quick] [--out bench/results/serve.json]

1. Floor: in this process, the FAISS search alone (one query, a batch) and a brute-force torch
   matmul ranking, on the same checkpoint and thread count as the server (``bench/floor.py``).
2. Load: ``python -m mimea.service.cli serve`` in its own process (``bench/server_process.py``),
   driven by a separate load process (``bench/loadgen.py``: raw HTTP/1.1 keep-alive over asyncio
   streams, uvloop when installed: far cheaper per request than a general client, so on a 2-core
   machine it measures the server, not itself). Routes ``GET /candidates/{e}?k=10`` and
   ``POST /align``, cache off / cold Redis / warm Redis, at concurrency 1, 8 and 32, by the
   model's default ranking; with ``--metrics``, uncached ``/candidates`` at concurrency 32 by
   each ranking named. The server's RSS is recorded once loaded (``rss_idle_mb``) and after
   every run. Every run is bounded in requests and seconds; any non-200 answer or connection
   failure is an error (``bench/load_runs.py``).
3. Soak: mixed load at concurrency 8 against the uncached server, RSS sampled periodically.
4. Scaling: synthetic clustered embeddings at 40k / 200k / 1M, flat vs IVF (and HNSW where it
   builds in reasonable time), built with ``service.index.build_index`` (``bench/scaling.py``).

With ``--baseline DIR`` (another checkout, e.g. ``git archive COMMIT | tar -x -C DIR``) the bench
only compares, and records ``before_after`` in ``--out``: uncached ``/candidates`` at
concurrency 32 against the baseline's server and this checkout's in turn, ``--rounds`` times (on
a shared machine only alternation makes two versions comparable), with each server's RSS once
loaded and its CPU time per request. A full run keeps that record.

The checkpoint is ``--checkpoint``, else the trained zh_en one, else a synthetic one of its size
(``bench/checkpoints.py``). Results go to ``--out`` (JSON) and a markdown table to stdout.
``drive`` is the internal sub-command that runs the load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.checkpoints import choose_checkpoint
from bench.floor import measure_floor
from bench.load_runs import run_matrix, soak
from bench.loadgen import drive_main, get_request, run_load
from bench.scaling import measure_scaling
from bench.server_process import NAMESPACE, Server, flush_namespace, redis_ok

ROOT = Path(__file__).resolve().parents[1]

ROUTES = ("candidates", "align")
CACHES = ("off", "cold", "warm")


def metric_row(server: Server, uris: list[str], metric: str, count: int, max_seconds: float,
               rng: random.Random) -> dict[str, Any]:
    """Uncached ``/candidates?metric=...`` at concurrency 32, as a matrix row."""
    requests = [get_request(uris[rng.randrange(len(uris))], metric=metric) for _ in range(count)]
    res = run_load(server.port, requests, 32, count, max_seconds)
    row = {"route": "candidates", "metric": metric, "cache": "off", "concurrency": 32,
           **{key: res[key] for key in ("requests", "errors", "rps", "p50_ms", "p95_ms",
                                        "p99_ms")},
           "rss_mb": server.rss_mb(), "seconds": res["seconds"]}
    print(f"  candidates metric={metric} c=32 {row['requests']:>6} req {row['rps']:>8.1f} "
          f"req/s  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}", flush=True)
    return row


def compare(args: argparse.Namespace, checkpoint: Path, uris: list[str], env: dict[str, str],
            tmp: Path, rng: random.Random) -> dict[str, Any]:
    """Uncached ``/candidates`` at c=32, the baseline's server (its default ranking) and this
    checkout's (its default and each of ``--metrics``) in turn; medians per server."""
    sides = [("before", args.baseline, args.baseline_checkpoint or checkpoint, None)]
    sides += [("after", ROOT, checkpoint, metric)
              for metric in [None, *filter(None, args.metrics.split(","))]]
    runs = []
    for round_ in range(args.rounds):
        for side, root, served, metric in sides:
            server = Server(served, tmp / f"{side}.log", env, root=root)
            try:
                idle, cpu = server.rss_mb(), server.cpu_s()
                requests = [get_request(uris[rng.randrange(len(uris))], metric=metric)
                            for _ in range(5000)]
                res = run_load(server.port, requests, 32, 5000, 15.0)
                runs.append({"side": side, "metric": metric or "default", "round": round_,
                             "rss_idle_mb": idle, "errors": res["errors"],
                             **{k: res[k] for k in ("requests", "rps", "p50_ms", "p99_ms")},
                             "server_cpu_ms_per_request": round(
                                 1000 * (server.cpu_s() - cpu) / res["requests"], 3)})
                print(f"  {json.dumps(runs[-1])}", flush=True)
            finally:
                server.stop()
    keys = ("rss_idle_mb", "rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
    medians = {f"{side} ({metric or 'default'})": {
        k: float(np.median([r[k] for r in runs if (r["side"], r["metric"]) ==
                            (side, metric or "default")])) for k in keys}
        for side, _, _, metric in sides}
    return {"baseline": str(args.baseline), "rounds": args.rounds, "medians": medians,
            "runs": runs, "command": " ".join(["python", "-m", "bench.serve", *sys.argv[1:]])}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| route | cache | conc. | requests | errors | req/s | p50 ms | p95 ms | p99 ms "
             "| RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        route = f"{r['route']} ({r['metric']})" if "metric" in r else r["route"]
        lines.append(f"| {route} | {r['cache']} | {r['concurrency']} | {r['requests']} | "
                     f"{r['errors']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke test: small, < 60 s")
    parser.add_argument("--tiny", action="store_true",
                        help="with no --checkpoint: a 620-entity synthetic checkpoint (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="FAISS/torch threads in the server and the floor (MIMEA_THREADS; "
                             "default: every core, as the service)")
    parser.add_argument("--search-precision", choices=["float32", "bfloat16"], default=None,
                        help="MIMEA_SEARCH_PRECISION for the server (default: its setting)")
    parser.add_argument("--batch-window-ms", type=float, default=None,
                        help="MIMEA_BATCH_WINDOW_MS for the server (default: its setting)")
    parser.add_argument("--scaling-sizes", default=None,
                        help="comma-separated corpus sizes (default 40000,200000,1000000)")
    parser.add_argument("--hnsw-max", type=int, default=40_000,
                        help="largest size also measured with HNSW (1M takes many minutes)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--keep-scaling", action="store_true",
                        help="skip the scaling section and keep the rows already in --out")
    parser.add_argument("--scaling-only", action="store_true",
                        help="re-measure only the scaling section and update --out in place")
    parser.add_argument("--soak-seconds", type=float, default=None,
                        help="0 skips the soak (for quick iterations)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="subset, comma-separated")
    parser.add_argument("--caches", default=",".join(CACHES), help="subset, comma-separated")
    parser.add_argument("--metrics", default="",
                        help="rankings also measured on uncached /candidates at c=32, "
                             "comma-separated (cosine, csls, sinkhorn)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout: only compare its server with this one's "
                             "(before_after in --out)")
    parser.add_argument("--baseline-checkpoint", type=Path, default=None,
                        help="what the baseline serves (default: --checkpoint)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of --baseline")
    args = parser.parse_args(argv)

    quick = args.quick
    if args.scaling_only:
        result = json.loads(args.out.read_text(encoding="utf-8"))
        sizes = ([int(x) for x in args.scaling_sizes.split(",")] if args.scaling_sizes
                 else [40_000, 200_000, 1_000_000])
        result["scaling"] = measure_scaling(sizes, 300, 200, args.hnsw_max, args.threads)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="mimea-bench-"))
    rng = random.Random(0)
    try:
        print("checkpoint: building/choosing ...", flush=True)
        checkpoint, described = choose_checkpoint(args, tmp)
        print(f"checkpoint: {described}", flush=True)
        if args.baseline is not None:
            result = json.loads(args.out.read_text(encoding="utf-8"))
            lines = (checkpoint / "entities.tsv").read_text(encoding="utf-8").splitlines()
            env = {"MIMEA_THREADS": str(args.threads), "MIMEA_CACHE_NAMESPACE": NAMESPACE,
                   "MIMEA_REDIS_URL": "", "MIMEA_CACHE_SIZE": "0"}
            result["before_after"] = compare(args, checkpoint,
                                             [line.split("\t")[2] for line in lines[1:]], env,
                                             tmp, rng)
            args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(json.dumps(result["before_after"]["medians"], indent=2))
            return 0

        print("floor ...", flush=True)
        floor = measure_floor(checkpoint, args.threads, repeats=50 if quick else 300,
                              precision=args.search_precision or "auto")
        entities = floor.pop("_entities")
        uris, kgs = entities["uris"], entities["kgs"]
        print(f"  {json.dumps(floor)}", flush=True)

        if quick:
            plan = {"candidates": {1: 40, 8: 100, 32: 200}, "align": {1: 20, 8: 60, 32: 120}}
            max_seconds, soak_s, every = 3.0, 4.0, 1.0
        else:
            plan = {"candidates": {1: 400, 8: 3000, 32: 5000},
                    "align": {1: 200, 8: 1000, 32: 2000}}
            max_seconds, soak_s, every = 15.0, 60.0, 5.0
        if args.soak_seconds is not None:
            soak_s = args.soak_seconds
        routes = [r for r in args.routes.split(",") if r in ROUTES]
        caches = [c for c in args.caches.split(",") if c in CACHES]
        use_redis = bool({"cold", "warm"} & set(caches)) and redis_ok(args.redis_url)
        notes = []
        if not use_redis and {"cold", "warm"} & set(caches):
            notes.append(f"Redis not reachable at {args.redis_url}: cold/warm rows skipped")
            print(f"warning: {notes[-1]}", file=sys.stderr, flush=True)
        base_env = {"MIMEA_THREADS": str(args.threads), "MIMEA_CACHE_NAMESPACE": NAMESPACE}
        if args.batch_window_ms is not None:
            base_env["MIMEA_BATCH_WINDOW_MS"] = str(args.batch_window_ms)
        if args.search_precision is not None:
            base_env["MIMEA_SEARCH_PRECISION"] = args.search_precision

        rows: list[dict[str, Any]] = []
        soak_result: dict[str, Any] = {"errors": 0, "samples": [], "skipped": True}
        print("load: cache off ...", flush=True)
        server = Server(checkpoint, tmp / "server-off.log",
                        {**base_env, "MIMEA_REDIS_URL": "", "MIMEA_CACHE_SIZE": "0"})
        rss_idle_mb = server.rss_mb()
        try:
            if "off" in caches:
                rows += run_matrix(server, routes, ["off"], uris, kgs, plan, max_seconds, None,
                                   rng)
            rows += [metric_row(server, uris, metric, plan["candidates"][32], max_seconds, rng)
                     for metric in filter(None, args.metrics.split(","))]
            if soak_s > 0:
                print(f"soak: {soak_s:.0f}s ...", flush=True)
                soak_result = soak(server, uris, kgs, soak_s, every, rng)
                print(f"  soak: {soak_result['requests']} requests, {soak_result['errors']} "
                      f"errors, RSS growth {soak_result['rss_growth_mb']} MB", flush=True)
        finally:
            server.stop()
        if use_redis:
            print("load: Redis cold / warm ...", flush=True)
            server = Server(checkpoint, tmp / "server-redis.log",
                            {**base_env, "MIMEA_REDIS_URL": args.redis_url})
            try:
                rows += run_matrix(server, routes, [c for c in caches if c != "off"], uris,
                                   kgs, plan, max_seconds, args.redis_url, rng)
            finally:
                server.stop()
                flush_namespace(args.redis_url)
        order = {(r, c): i for i, (r, c) in enumerate((r, c) for r in ROUTES for c in CACHES)}
        rows.sort(key=lambda r: (order[(r["route"], r["cache"])], r["concurrency"]))

        scaling: list[dict[str, Any]] = []
        if args.keep_scaling:
            if args.out.is_file():
                scaling = json.loads(args.out.read_text(encoding="utf-8")).get("scaling", [])
            print(f"scaling: kept {len(scaling)} rows from {args.out}", flush=True)
        elif not args.skip_scaling:
            sizes = ([int(s) for s in args.scaling_sizes.split(",")] if args.scaling_sizes
                     else ([2000, 10_000] if quick else [40_000, 200_000, 1_000_000]))
            print(f"scaling {sizes} ...", flush=True)
            scaling = measure_scaling(sizes, 300, 200, args.hnsw_max, args.threads)

        single = next((r for r in rows if r["route"] == "candidates" and r["cache"] == "off"
                       and r["concurrency"] == 1), None)
        result = {
            "checkpoint": described, "quick": quick, "threads": args.threads,
            "search_precision": args.search_precision or "service default",
            "cpus": os.cpu_count(), "rss_idle_mb": rss_idle_mb, "rows": rows, "floor": floor,
            "scaling": scaling,
            "soak": soak_result, "notes": notes,
            "e2e_single_over_faiss_single": (round(single["p50_ms"] / floor["faiss_single_ms"], 2)
                                             if single else None),
            "command": " ".join(["python", "-m", "bench.serve", *(argv or sys.argv[1:])]),
            "wall_s": round(time.time() - started, 1),
        }
        if args.out.is_file():  # measured by --baseline runs, kept until the next one
            previous = json.loads(args.out.read_text(encoding="utf-8"))
            if "before_after" in previous:
                result["before_after"] = previous["before_after"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(markdown(result))
        print(f"wrote {args.out} in {result['wall_s']}s", flush=True)
        errors = sum(r["errors"] for r in rows) + soak_result["errors"]
        return 1 if errors else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        drive_main()
    else:
        sys.exit(main())
