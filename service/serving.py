"""The serving layer between routes and the aligner: identifier resolution, cache, batching.

Answers are produced as JSON bytes once (in the worker thread), stored in the cache as such and
returned as such, so a cache hit costs one lookup and no serialisation. Batch answers are the
single answers joined, so a batch route returns exactly what the single route would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.aligner import Aligner
from service.batcher import MicroBatcher
from service.cache import ResponseCache
from service.errors import EntityNotFound, ServiceError
from service.index import set_threads
from service.metrics import Metrics
from service.settings import Settings


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class AlignmentService:
    """Async façade over an ``Aligner`` with caching and micro-batched searches."""

    def __init__(self, aligner: Aligner, cache: ResponseCache, metrics: Metrics,
                 settings: Settings) -> None:
        self.aligner = aligner
        self.cache = cache
        self.metrics = metrics
        self._prefix = f"{settings.cache_namespace}:{aligner.model_version}:"
        # One worker: searches and matmuls already use BLAS/OpenMP threads. OpenMP's thread count
        # is per calling thread, so the worker sets its own when it starts.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimea-search",
                                            initializer=set_threads, initargs=(settings.threads,))
        window = settings.batch_window_ms / 1000.0
        self._candidates = MicroBatcher(
            self._candidates_bytes, self._executor, max_batch=settings.max_batch_size,
            window_s=window,
            on_batch=lambda n, s: metrics.observe_batch("candidates", n, s))
        self._align = MicroBatcher(
            self._align_bytes, self._executor, max_batch=settings.max_batch_size,
            window_s=window, on_batch=lambda n, s: metrics.observe_batch("align", n, s))
        self._hits = {kind: metrics.cache_hits.labels(kind) for kind in ("candidates", "align")}
        self._misses = {kind: metrics.cache_misses.labels(kind)
                        for kind in ("candidates", "align")}

    # ---------------------------------------------------------------------- resolution

    async def resolve(self, uri: str) -> int:
        """Row of ``uri``; unknown → 404 with suggestions (computed off the event loop)."""
        row = self.aligner.row_of.get(uri)
        if row is None:
            loop = asyncio.get_running_loop()
            suggestions = await loop.run_in_executor(None, self.aligner.suggest, uri)
            raise EntityNotFound(uri, suggestions)
        return row

    async def resolve_pair(self, source: str, target: str, *, where: str = "") -> tuple[int, int]:
        s, t = await self.resolve(source), await self.resolve(target)
        kgs = self.aligner.kgs
        if kgs[s] == kgs[t]:
            raise ServiceError(422, "same_kg",
                               f"{where}source {source!r} and target {target!r} are both in "
                               f"KG{int(kgs[s])}; alignment pairs one entity of each KG")
        return s, t

    # ------------------------------------------------------------------------ answers

    def _candidates_bytes(self, queries: Sequence[tuple[int, int, bool]]) -> list[bytes]:
        return [_dumps(r) for r in self.aligner.candidates_batch(queries)]

    def _align_bytes(self, pairs: Sequence[tuple[int, int]]) -> list[bytes]:
        return [_dumps(r) for r in self.aligner.align_batch(pairs)]

    async def _cached(self, kind: str, keys: list[str], items: list[Any],
                      batcher: MicroBatcher[Any, bytes]) -> list[bytes]:
        """Cached answers for ``keys``; the misses are computed in one batched call."""
        answers = await self.cache.get_many(keys)
        missing = [i for i, a in enumerate(answers) if a is None]
        if len(missing) < len(keys):
            self._hits[kind].inc(len(keys) - len(missing))
        if missing:
            self._misses[kind].inc(len(missing))
            computed = await batcher.submit_many([items[i] for i in missing])
            for i, value in zip(missing, computed, strict=True):
                answers[i] = value
            await self.cache.set_many({keys[i]: answers[i] for i in missing})  # type: ignore[misc]
        return answers  # type: ignore[return-value]

    def _candidates_key(self, row: int, k: int, csls: bool) -> str:
        return f"{self._prefix}cand:{row}:{k}:{int(csls)}"

    def _align_key(self, s: int, t: int) -> str:
        return f"{self._prefix}align:{s}:{t}"

    async def candidates(self, entity: str, k: int, csls: bool) -> bytes:
        row = await self.resolve(entity)
        key = self._candidates_key(row, k, csls)
        return (await self._cached("candidates", [key], [(row, k, csls)], self._candidates))[0]

    async def candidates_batch(self, queries: Sequence[tuple[str, int, bool]]) -> bytes:
        items = [(await self.resolve(e), k, c) for e, k, c in queries]
        keys = [self._candidates_key(*item) for item in items]
        answers = await self._cached("candidates", keys, items, self._candidates)
        return b'{"results":[' + b",".join(answers) + b"]}"

    async def align(self, source: str, target: str) -> bytes:
        pair = await self.resolve_pair(source, target)
        return (await self._cached("align", [self._align_key(*pair)], [pair], self._align))[0]

    async def align_batch(self, pairs: Sequence[tuple[str, str]]) -> bytes:
        items = [await self.resolve_pair(s, t, where=f"pairs[{i}]: ")
                 for i, (s, t) in enumerate(pairs)]
        keys = [self._align_key(*item) for item in items]
        answers = await self._cached("align", keys, items, self._align)
        return b'{"results":[' + b",".join(answers) + b"]}"

    def entities(self, kg: int | None, prefix: str, limit: int) -> dict[str, Any]:
        rows, more = self.aligner.find_entities(kg, prefix, limit)
        a = self.aligner
        return {"entities": [{"entity": a.uris[r], "kg": int(a.kgs[r]), "id": a.ids[r]}
                             for r in rows], "has_more": more}

    async def ready(self) -> dict[str, Any]:
        status = await self.cache.check()
        return {"status": "ready", "model_version": self.aligner.model_version,
                "cache": {"backend": self.cache.backend, "status": status}}

    async def aclose(self) -> None:
        await self._candidates.aclose()
        await self._align.aclose()
        self._executor.shutdown(wait=True)
