"""Index scaling: flat vs IVF (and HNSW) on synthetic clustered embeddings of growing size."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from bench.floor import median_ms


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
    import numpy as np
    import torch

    from mimea.service.index import build_index, set_threads

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
                kgi.ann.nprobe = params["ivf_nprobe"]
            else:
                built.clear()
                gc.collect()
                start = time.perf_counter()
                kgi = build_index(torch.from_numpy(base), torch.zeros(n, 0), kind=kind,
                                  **params)  # type: ignore[arg-type]
                build_s = time.perf_counter() - start
                memory = kgi.nbytes / 2**20
                built[key] = (kgi, build_s, memory)
            set_threads(threads)
            if kind == "flat":
                truth = kgi.search(torch.from_numpy(queries), 10, None)[1].numpy()
            it = iter(range(10**9))

            def one(kgi: Any = kgi, it: Any = it, queries: Any = queries) -> None:
                i = next(it) % n_queries
                kgi.search(torch.from_numpy(queries[i:i + 1]), 10, None)

            search_ms = median_ms(one, n_queries)
            found = kgi.search(torch.from_numpy(queries), 10, None)[1].numpy()
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
