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


def rescored_agreement(exact: Any, rescored: Any, queries: Any, column: int | None,
                       k: int = 50, tolerance: float = 1e-5) -> dict[str, Any]:
    """How often a compressed scan with float32 rescoring answers as the float32 scan does,
    over every query, for the ranking of bias ``column``: the same top-``k`` ids in the same
    order, and the same scores the ranking orders by (within ``tolerance``; ids may then differ
    only among entities whose scores tie)."""
    exact_cosine, exact_ids = exact.search(queries, k, column)
    cosine, ids = rescored.search(queries, k, column)
    difference = (exact.keyed(exact_cosine, column, exact_ids)
                  - exact.keyed(cosine, column, ids)).abs()
    return {"queries": len(queries), "k": k,
            "same_ids": round(float((exact_ids == ids).all(dim=1).float().mean()), 5),
            "same_scores": round(float((difference <= tolerance).all(dim=1).float().mean()), 5),
            "max_score_difference": float(difference.max())}


def measure_floor(checkpoint: Path, threads: int, repeats: int,
                  precision: str = "auto") -> dict[str, Any]:
    """The index's own cost on the served checkpoint, with the server's thread count and
    search precision (``service_*`` rows, by the model's default ranking unless named); the
    ``faiss_*`` rows are a FAISS flat index over the same vectors, the ``torch_*`` rows the
    float32 scan and the ``bf16_*`` and ``int8_*`` rows the compressed ones, whatever the
    service uses."""
    import faiss
    import numpy as np
    import torch

    from mimea.service.aligner import Aligner
    from mimea.service.index import build_index, set_threads
    from mimea.service.settings import Settings

    aligner = Aligner.load(Settings(checkpoint=checkpoint, device="cpu", index="flat",
                                    threads=threads, redis_url=None,
                                    search_precision=precision))
    set_threads(threads)
    rankings = aligner.rankings
    default = rankings.default
    column = rankings.column(default)
    rng = np.random.default_rng(1)
    q_t = aligner.scorer.indexes[1].vectors
    queries = q_t.numpy()
    index = aligner.scorer.indexes[2]
    target = index.vectors
    rows = rng.integers(0, len(queries), size=max(repeats, 256))
    it = iter(range(10**9))

    raw = faiss.IndexFlatIP(target.shape[1])  # the bench's own copy: the service has none
    raw.add(target.numpy())

    def one() -> None:
        i = rows[next(it) % len(rows)]
        raw.search(queries[i:i + 1], 10)

    def faiss_batch(n: int) -> Any:
        block = np.ascontiguousarray(queries[rows[:n]])
        return lambda: raw.search(block, 10)

    def batch(searched: Any, n: int, ranking: int | None = column) -> Any:
        """One search of ``n`` queries by a service index, for the ranking of ``ranking``."""
        block = q_t[torch.from_numpy(rows[:n])]
        return lambda: searched.search(block, 10, ranking)

    def torch_one() -> None:
        i = int(rows[next(it) % len(rows)])
        torch.topk(q_t[i:i + 1] @ target.T, 10, dim=1)

    def torch_batch(n: int) -> Any:
        sel = torch.from_numpy(rows[:n])
        return lambda: torch.topk(q_t[sel] @ target.T, 10, dim=1)

    def at_precision(precision: str) -> Any:
        """The served KG2 index when it scans at ``precision``, else a new one that does."""
        return (index if index.precision == precision
                else build_index(target, index.biases, precision=precision))  # type: ignore[arg-type]

    rescoring = at_precision("bfloat16")
    quantised = at_precision("int8")
    kg1_rows = aligner.directory.rows[1]

    def service(n: int, ranking: str) -> Any:
        picked = [int(kg1_rows[r]) for r in rows[:n]]
        return lambda: aligner.candidates_batch([(r, 10, ranking) for r in picked])

    def service_one() -> None:
        i = int(kg1_rows[rows[next(it) % len(rows)]])
        aligner.candidates_batch([(i, 10, default)])

    floor = {
        "index": "flat (torch matmul + top-k)", "threads": threads, "k": 10,
        "search_precision": index.precision, "ranking": default,
        "corpus": int(index.size), "dim": int(queries.shape[1]),
        "faiss_single_ms": median_ms(one, repeats),
        "faiss_batch32_ms": median_ms(faiss_batch(32), max(10, repeats // 10)),
        "faiss_batch256_ms": median_ms(faiss_batch(256), max(5, repeats // 40)),
        "torch_single_ms": median_ms(torch_one, repeats),
        "torch_batch32_ms": median_ms(torch_batch(32), max(10, repeats // 10)),
        "torch_batch256_ms": median_ms(torch_batch(256), max(5, repeats // 40)),
        "service_search_batch32_ms": median_ms(batch(index, 32), max(10, repeats // 10)),
        "bf16_rescored_single_ms": median_ms(batch(rescoring, 1), repeats),
        "bf16_rescored_batch32_ms": median_ms(batch(rescoring, 32),
                                              max(10, repeats // 10)),
        "bf16_rescored_batch256_ms": median_ms(batch(rescoring, 256),
                                               max(5, repeats // 40)),
        "int8_rescored_single_ms": median_ms(batch(quantised, 1), repeats),
        "int8_rescored_batch32_ms": median_ms(batch(quantised, 32), max(10, repeats // 10)),
        "int8_rescored_batch256_ms": median_ms(batch(quantised, 256), max(5, repeats // 40)),
        "service_compute_single_ms": median_ms(service_one, repeats),
        "service_compute_batch32_ms": {
            ranking: median_ms(service(32, ranking), max(10, repeats // 10))
            for ranking in rankings.available},
    }
    exact = at_precision("float32")
    floor["bf16_agreement_top50"] = rescored_agreement(exact, rescoring, q_t, column)
    floor["int8_agreement_top50"] = rescored_agreement(exact, quantised, q_t, column)
    floor["faiss_batch32_per_query_ms"] = round(floor["faiss_batch32_ms"] / 32, 4)
    floor["faiss_batch256_per_query_ms"] = round(floor["faiss_batch256_ms"] / 256, 4)
    entities = {"uris": aligner.directory.uris, "kgs": aligner.directory.kgs.tolist()}
    aligner.close()
    floor["_entities"] = entities
    return floor
