"""The index floor: the served checkpoint's raw search cost, in process, at the server's threads."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def median_ms(fn: Any, repeats: int) -> float:
    import numpy as np

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 4)


def bfloat16_agreement(exact: Any, rescored: Any, queries: Any, k: int = 50,
                       tolerance: float = 1e-5) -> dict[str, Any]:
    """How often the bfloat16 scan with float32 rescoring answers as the float32 scan does,
    over every query: the same top-``k`` ids in the same order, and the same scores (within
    ``tolerance``; ids may then differ only among entities whose vectors tie)."""
    import numpy as np

    exact_scores, exact_ids = exact.search(queries, k)
    scores, ids = rescored.search(queries, k)
    difference = np.abs(exact_scores - scores)
    return {"queries": len(queries), "k": k,
            "same_ids": round(float((exact_ids == ids).all(axis=1).mean()), 5),
            "same_scores": round(float((difference <= tolerance).all(axis=1).mean()), 5),
            "max_score_difference": float(difference.max())}


def measure_floor(checkpoint: Path, threads: int, repeats: int,
                  precision: str = "auto") -> dict[str, Any]:
    """The index's own cost on the served checkpoint, with the server's thread count and
    search precision (``service_*`` rows); the ``torch_*`` rows are the float32 scan and the
    ``bf16_*`` rows the bfloat16 one, whatever the service uses."""
    import numpy as np
    import torch

    from service.aligner import Aligner
    from service.index import build_index, set_threads
    from service.settings import Settings

    aligner = Aligner.load(Settings(checkpoint=checkpoint, device="cpu", index="flat",
                                    threads=threads, redis_url=None,
                                    search_precision=precision))
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

    def batch(searched: Any, n: int) -> Any:
        """One search of ``n`` queries by ``searched`` (the faiss index or a KGIndex)."""
        block = np.ascontiguousarray(queries[rows[:n]])
        return lambda: searched.search(block, 10)

    q_t = torch.from_numpy(queries)

    def torch_one() -> None:
        i = int(rows[next(it) % len(rows)])
        torch.topk(q_t[i:i + 1] @ target.T, 10, dim=1)

    def torch_batch(n: int) -> Any:
        sel = torch.from_numpy(rows[:n])
        return lambda: torch.topk(q_t[sel] @ target.T, 10, dim=1)

    def at_precision(precision: str) -> Any:
        """The served KG2 index when it scans at ``precision``, else a new one that does."""
        return (index if index.precision == precision
                else build_index(aligner.joint_np[2], precision=precision))

    rescoring = at_precision("bfloat16")
    kg1_rows = aligner.rows[1]

    def service_one() -> None:
        i = int(kg1_rows[rows[next(it) % len(rows)]])
        aligner.candidates_batch([(i, 10, False)])

    floor = {
        "index": "flat (IndexFlatIP)", "threads": threads, "k": 10,
        "search_precision": index.precision,
        "corpus": int(index.size), "dim": int(queries.shape[1]),
        "faiss_single_ms": median_ms(one, repeats),
        "faiss_batch32_ms": median_ms(batch(raw, 32), max(10, repeats // 10)),
        "faiss_batch256_ms": median_ms(batch(raw, 256), max(5, repeats // 40)),
        "torch_single_ms": median_ms(torch_one, repeats),
        "torch_batch32_ms": median_ms(torch_batch(32), max(10, repeats // 10)),
        "torch_batch256_ms": median_ms(torch_batch(256), max(5, repeats // 40)),
        "service_search_batch32_ms": median_ms(batch(index, 32), max(10, repeats // 10)),
        "bf16_rescored_single_ms": median_ms(batch(rescoring, 1), repeats),
        "bf16_rescored_batch32_ms": median_ms(batch(rescoring, 32),
                                              max(10, repeats // 10)),
        "bf16_rescored_batch256_ms": median_ms(batch(rescoring, 256),
                                               max(5, repeats // 40)),
        "service_compute_single_ms": median_ms(service_one, repeats),
    }
    floor["bf16_agreement_top50"] = bfloat16_agreement(at_precision("float32"), rescoring,
                                                       queries)
    floor["faiss_batch32_per_query_ms"] = round(floor["faiss_batch32_ms"] / 32, 4)
    floor["faiss_batch256_per_query_ms"] = round(floor["faiss_batch256_ms"] / 256, 4)
    entities = {"uris": aligner.uris, "kgs": aligner.kgs.tolist()}
    aligner.close()
    floor["_entities"] = entities
    return floor
