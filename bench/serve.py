"""Serving benchmark: a real uvicorn server under load, the raw index floor, and index scaling.

    python bench/serve.py [--checkpoint DIR] [--quick] [--out bench/results/serve.json]

1. Floor: in this process, the FAISS search alone (one query, a batch) and a brute-force torch
   matmul ranking, on the same checkpoint and thread count as the server.
2. Load: ``python -m service.cli serve`` in its own process, driven by a separate load process
   (raw HTTP/1.1 keep-alive over asyncio streams, uvloop when installed: far cheaper per request
   than a general client, so on a 2-core machine it measures the server, not itself). Routes
   ``GET /candidates/{e}?k=10`` and ``POST /align``, cache off / cold Redis / warm Redis, at
   concurrency 1, 8 and 32; every run is bounded in requests and seconds; any non-200 answer
   or connection failure is an error.
3. Soak: mixed load at concurrency 8 against the uncached server, RSS sampled periodically.
4. Scaling: synthetic clustered embeddings at 40k / 200k / 1M, flat vs IVF (and HNSW where it
   builds in reasonable time), built with ``service.index.build_index``.

Results go to ``--out`` (JSON) and a markdown table to stdout. ``drive`` is the internal
sub-command the load process runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python bench/serve.py`` from anywhere
    sys.path.insert(0, str(ROOT))

ZH_EN_DATA = ROOT.parent / "shared" / "data" / "dbp15k" / "zh_en"
ZH_EN_CHECKPOINT = ROOT / "checkpoints" / "zh_en"
ZH_EN_SIZES = (19_388, 19_572)
NAMESPACE = "mimea-bench"
ROUTES = ("candidates", "align")
CACHES = ("off", "cold", "warm")


# --------------------------------------------------------------------------- checkpoint


def build_synthetic(path: Path, n1: int, n2: int, *, dim: int = 300, seed: int = 0) -> Path:
    """A zh_en-sized checkpoint: 3 modalities x ``dim``; KG2 rows are noisy copies of KG1 partners.

    The joint embedding is the concatenation of the weighted, normalised modal embeddings (as
    the model builds it), so candidates and align answers are meaningful, not random.
    """
    import torch

    from model.checkpoint import EmbeddingTables, EntityTable, write_checkpoint

    gen = torch.Generator().manual_seed(seed)
    modalities = ["structure", "attribute", "visual"]
    n_gold = min(n1, n2, max(1, int(0.77 * min(n1, n2))))  # DBP15K: 15,000 of ~19,500
    perm = torch.randperm(n1, generator=gen)[:n_gold]
    n = n1 + n2
    mask = torch.ones(n, len(modalities), dtype=torch.bool)
    mask[:, 2] = torch.rand(n, generator=gen) > 0.2  # some entities have no image
    mods: dict[str, torch.Tensor] = {}
    for m in modalities:
        kg1 = torch.randn(n1, dim, generator=gen)
        kg2 = torch.randn(n2, dim, generator=gen)
        kg2[:n_gold] = kg1[perm] + 0.6 * torch.randn(n_gold, dim, generator=gen)
        mods[m] = torch.cat([kg1, kg2])
    for i, m in enumerate(modalities):
        mods[m][~mask[:, i]] = 0.0
    raw = torch.rand(n, len(modalities), generator=gen) + 0.2
    weights = torch.where(mask, raw, torch.zeros_like(raw))
    weights = weights / weights.sum(1, keepdim=True)
    joint = torch.cat([weights[:, i:i + 1] * torch.nn.functional.normalize(mods[m], dim=1)
                       for i, m in enumerate(modalities)], dim=1)
    uris = ([f"http://zh.dbpedia.org/resource/实体_{i}" for i in range(n1)]
            + [f"http://dbpedia.org/resource/Entity_{j}" for j in range(n2)])
    pairs = [[int(perm[j]), n1 + j] for j in range(n_gold)]
    write_checkpoint(
        path,
        config={"modalities": modalities, "model": {"synthetic": True},
                "data": {"name": f"synthetic-{n1}x{n2}", "kg1": "KG1", "kg2": "KG2"}},
        weights={"encoder.weight": torch.zeros(1, 1)},
        embeddings=EmbeddingTables(joint=joint, modalities=mods, fusion_weights=weights,
                                   mask=mask),
        entities=EntityTable(ids=list(range(n)), kgs=[1] * n1 + [2] * n2, uris=uris),
        split={"train_ratio": 0.3, "seed": seed, "train": pairs[: n_gold // 3], "valid": [],
               "test": pairs[n_gold // 3:]},
        metrics={"synthetic": True},
    )
    return path


def choose_checkpoint(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """``--checkpoint``, else the trained zh_en checkpoint, else a synthetic one of its size."""
    if args.checkpoint is not None:
        return args.checkpoint, f"given: {args.checkpoint}"
    if ZH_EN_DATA.is_dir() and (ZH_EN_CHECKPOINT / "config.json").is_file():
        return ZH_EN_CHECKPOINT, f"trained DBP15K zh_en: {ZH_EN_CHECKPOINT}"
    n1, n2 = (300, 320) if args.tiny else ZH_EN_SIZES
    path = build_synthetic(tmp / "synthetic", n1, n2)
    return path, (f"synthetic {n1} + {n2} entities, 3 modalities x 300-d, joint 900-d "
                  f"(no trained zh_en checkpoint at {ZH_EN_CHECKPOINT})")


# --------------------------------------------------------------------------- load driver


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


def run_load(port: int, requests: list[str], concurrency: int, max_requests: int,
             max_seconds: float, *, passes: int = 1, cycle: bool = False) -> dict[str, Any]:
    """Run one load in a separate process and return its measurements."""
    spec = {"host": "127.0.0.1", "port": port, "requests": requests, "concurrency": concurrency,
            "max_requests": max_requests, "max_seconds": max_seconds, "passes": passes,
            "cycle": cycle}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "drive"],
                          input=json.dumps(spec), capture_output=True, text=True,
                          timeout=max_seconds * passes + 120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"load process failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def get_request(uri: str, k: int = 10) -> str:
    return f"GET /candidates/{quote(uri, safe='/:')}?k={k} HTTP/1.1\r\nhost: bench\r\n\r\n"


def post_align(source: str, target: str) -> str:
    body = json.dumps({"source": source, "target": target}, ensure_ascii=True)
    return (f"POST /align HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n{body}")


# --------------------------------------------------------------------------- server


class Server:
    """``python -m service.cli serve`` on a free loopback port, configured by environment."""

    def __init__(self, checkpoint: Path, log: Path, env: dict[str, str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.log = log
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MIMEA_API_KEY": "",
                    "MIMEA_LOG_LEVEL": "WARNING", "MIMEA_DEVICE": "cpu", **env}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--checkpoint", str(checkpoint),
                 "--port", str(self.port)], cwd=ROOT, env=full_env, stdout=out,
                stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        """VmRSS of the server process (psutil is not a dependency)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def flush_namespace(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{NAMESPACE}:*", count=5000))
    for lo in range(0, len(keys), 5000):
        client.delete(*keys[lo:lo + 5000])
    client.close()


def redis_ok(redis_url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


# --------------------------------------------------------------------------- floor


def _median_ms(fn: Any, repeats: int) -> float:
    import numpy as np

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)


def measure_floor(checkpoint: Path, threads: int, repeats: int) -> dict[str, Any]:
    """The index's own cost on the served checkpoint, with the server's thread count."""
    import numpy as np
    import torch

    from service.aligner import Aligner
    from service.index import set_threads
    from service.settings import Settings

    aligner = Aligner.load(Settings(checkpoint=checkpoint, device="cpu", index="flat",
                                    threads=threads, redis_url=None))
    set_threads(threads)
    rng = np.random.default_rng(1)
    queries = aligner.joint_np[1]
    index = aligner.indexes[2]
    target = aligner.joint_kg[2]
    rows = rng.integers(0, len(queries), size=max(repeats, 256))
    it = iter(range(10**9))

    raw = index.index  # the faiss index itself, not the service's wrapper

    def one() -> None:
        i = rows[next(it) % len(rows)]
        raw.search(queries[i:i + 1], 10)

    def batch(n: int) -> Any:
        block = np.ascontiguousarray(queries[rows[:n]])
        return lambda: raw.search(block, 10)

    q_t = torch.from_numpy(queries)

    def torch_one() -> None:
        i = int(rows[next(it) % len(rows)])
        torch.topk(q_t[i:i + 1] @ target.T, 10, dim=1)

    def torch_batch(n: int) -> Any:
        sel = torch.from_numpy(rows[:n])
        return lambda: torch.topk(q_t[sel] @ target.T, 10, dim=1)

    kg1_rows = aligner.rows[1]

    def service_one() -> None:
        i = int(kg1_rows[rows[next(it) % len(rows)]])
        aligner.candidates_batch([(i, 10, False)])

    floor = {
        "index": "flat (IndexFlatIP)", "threads": threads, "k": 10,
        "corpus": int(index.size), "dim": int(queries.shape[1]),
        "faiss_single_ms": _median_ms(one, repeats),
        "faiss_batch32_ms": _median_ms(batch(32), max(10, repeats // 10)),
        "faiss_batch256_ms": _median_ms(batch(256), max(5, repeats // 40)),
        "torch_single_ms": _median_ms(torch_one, repeats),
        "torch_batch32_ms": _median_ms(torch_batch(32), max(10, repeats // 10)),
        "torch_batch256_ms": _median_ms(torch_batch(256), max(5, repeats // 40)),
        "service_compute_single_ms": _median_ms(service_one, repeats),
    }
    floor["faiss_batch32_per_query_ms"] = round(floor["faiss_batch32_ms"] / 32, 4)
    floor["faiss_batch256_per_query_ms"] = round(floor["faiss_batch256_ms"] / 256, 4)
    entities = {"uris": aligner.uris, "kgs": aligner.kgs.tolist()}
    aligner.close()
    floor["_entities"] = entities
    return floor


# --------------------------------------------------------------------------- scaling


def clustered_vectors(n: int, dim: int, seed: int) -> Any:
    """Normalised vectors around ``n/100`` centres: embeddings have neighbourhoods, noise none."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        out[lo:hi] = centres[rng.integers(0, len(centres), hi - lo)]
        out[lo:hi] += 0.7 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def measure_scaling(sizes: list[int], dim: int, n_queries: int, hnsw_max: int,
                    threads: int) -> list[dict[str, Any]]:
    """Build time, memory, single-query latency and recall@10 vs flat per size and index."""
    import faiss
    import numpy as np

    from service.index import build_index, set_threads

    rows: list[dict[str, Any]] = []
    for n in sizes:
        base = clustered_vectors(n, dim, seed=n)
        rng = np.random.default_rng(7)
        picked = rng.integers(0, n, n_queries)
        # a query is a perturbed copy of a stored vector (noise of norm ~0.3, as a KG1 entity
        # is to its KG2 partner): its true neighbours are meaningful, not near-ties
        noise = rng.standard_normal((n_queries, dim)).astype(np.float32)
        queries = base[picked] + 0.3 / np.sqrt(dim) * noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        nlist = int(min(max(64, 4 * np.sqrt(n)), 1024))
        configs: list[tuple[str, dict[str, Any]]] = [("flat", {})]
        configs += [("ivf", {"ivf_nlist": nlist, "ivf_nprobe": p}) for p in (8, 16, 32)]
        if n <= hnsw_max:
            configs.append(("hnsw", {"hnsw_m": 16, "hnsw_ef_search": 128}))
        truth: Any = None
        built: dict[tuple[str, int | None], Any] = {}
        for kind, params in configs:
            key = (kind, params.get("ivf_nlist"))
            set_threads(os.cpu_count() or 1)  # building is batch work: every core
            if key in built:
                kgi, build_s, memory = built[key]
                kgi.index.nprobe = params["ivf_nprobe"]
            else:
                built.clear()
                gc.collect()
                start = time.perf_counter()
                kgi = build_index(base, kind=kind, **params)  # type: ignore[arg-type]
                build_s = time.perf_counter() - start
                memory = faiss.serialize_index(kgi.index).nbytes / 2**20
                built[key] = (kgi, build_s, memory)
            set_threads(threads)
            if kind == "flat":
                truth = kgi.search(queries, 10)[1]
            it = iter(range(10**9))

            def one(kgi: Any = kgi, it: Any = it, queries: Any = queries) -> None:
                i = next(it) % n_queries
                kgi.search(queries[i:i + 1], 10)

            search_ms = _median_ms(one, n_queries)
            found = kgi.search(queries, 10)[1]
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth,
                                                                                 strict=True)]))
            rows.append({"n": n, "dim": dim, "kind": kind, "params": params,
                         "build_s": round(build_s, 2), "memory_mb": round(memory, 1),
                         "search_ms_p50": search_ms, "recall_at_10": round(recall, 4),
                         "queries": n_queries})
            print(f"  scaling n={n:>8} {kind:5} {params}: build {build_s:.1f}s, "
                  f"{memory:.0f} MB, {search_ms:.3f} ms/query, recall@10 {recall:.3f}",
                  flush=True)
        built.clear()
        del base
        gc.collect()
    return rows


# --------------------------------------------------------------------------- load runs


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
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "drive"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
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


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = ["| route | cache | conc. | requests | errors | req/s | p50 ms | p95 ms | p99 ms "
             "| RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['route']} | {r['cache']} | {r['concurrency']} | {r['requests']} | "
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
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS/torch threads in the server and the floor (MIMEA_THREADS)")
    parser.add_argument("--batch-window-ms", type=float, default=None,
                        help="MIMEA_BATCH_WINDOW_MS for the server (default: its setting)")
    parser.add_argument("--scaling-sizes", default=None,
                        help="comma-separated corpus sizes (default 40000,200000,1000000)")
    parser.add_argument("--hnsw-max", type=int, default=40_000,
                        help="largest size also measured with HNSW (1M takes many minutes)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--scaling-only", action="store_true",
                        help="re-measure only the scaling section and update --out in place")
    parser.add_argument("--soak-seconds", type=float, default=None,
                        help="0 skips the soak (for quick iterations)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="subset, comma-separated")
    parser.add_argument("--caches", default=",".join(CACHES), help="subset, comma-separated")
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

        print("floor ...", flush=True)
        floor = measure_floor(checkpoint, args.threads, repeats=50 if quick else 300)
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

        rows: list[dict[str, Any]] = []
        soak_result: dict[str, Any] = {"errors": 0, "samples": [], "skipped": True}
        print("load: cache off ...", flush=True)
        server = Server(checkpoint, tmp / "server-off.log",
                        {**base_env, "MIMEA_REDIS_URL": "", "MIMEA_CACHE_SIZE": "0"})
        try:
            if "off" in caches:
                rows += run_matrix(server, routes, ["off"], uris, kgs, plan, max_seconds, None,
                                   rng)
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
        if not args.skip_scaling:
            sizes = ([int(s) for s in args.scaling_sizes.split(",")] if args.scaling_sizes
                     else ([2000, 10_000] if quick else [40_000, 200_000, 1_000_000]))
            print(f"scaling {sizes} ...", flush=True)
            scaling = measure_scaling(sizes, 300, 200, args.hnsw_max, args.threads)

        single = next((r for r in rows if r["route"] == "candidates" and r["cache"] == "off"
                       and r["concurrency"] == 1), None)
        result = {
            "checkpoint": described, "quick": quick, "threads": args.threads,
            "cpus": os.cpu_count(), "rows": rows, "floor": floor, "scaling": scaling,
            "soak": soak_result, "notes": notes,
            "e2e_single_over_faiss_single": (round(single["p50_ms"] / floor["faiss_single_ms"], 2)
                                             if single else None),
            "command": " ".join(["python", "bench/serve.py", *(argv or sys.argv[1:])]),
            "wall_s": round(time.time() - started, 1),
        }
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
