"""The serving layer between routes and the aligner: identifier resolution, cache, batching.

Answers are produced as JSON bytes once (in the worker thread), stored in the cache as such and
returned as such, so a cache hit costs one lookup and no serialisation. Batch answers are the
single answers joined, so a batch route returns exactly what the single route would; an item the
single route would refuse (unknown entity, pair within one KG) is answered by its error envelope
in its place, and the other items as usual.

Every request is bounded: a candidates request asks for at most ``max_request_candidates``
(entities x k), and a batch is computed in chunks of at most ``chunk_candidates`` candidates
(align: ``max_batch_size`` pairs) submitted one after another, so a large batch shares the
search worker with the requests that arrive meanwhile instead of holding it for its duration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mimea.model.ranking import Ranking
from mimea.service.aligner import Aligner
from mimea.service.alignment import ServedAlignment
from mimea.service.batcher import MicroBatcher
from mimea.service.cache import ResponseCache
from mimea.service.errors import EntityNotFound, ServiceError
from mimea.service.index import set_threads
from mimea.service.metrics import Metrics
from mimea.service.settings import Settings

T = TypeVar("T")
V = TypeVar("V")


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _item_error(error: ServiceError) -> bytes:
    """A batch item's error, the envelope the single route would have answered."""
    return _dumps({"error": {"code": error.code, "message": error.message,
                             "details": error.details}})


def _resolve_each(values: Sequence[V], resolve: Callable[[int, V], T]
                  ) -> tuple[list[bytes | None], list[int], list[T]]:
    """Resolve a batch item by item: the answers so far (the errors, in place), and the
    positions and resolved items still to answer."""
    answers: list[bytes | None] = [None] * len(values)
    positions: list[int] = []
    items: list[T] = []
    for i, value in enumerate(values):
        try:
            items.append(resolve(i, value))
        except ServiceError as error:
            answers[i] = _item_error(error)
        else:
            positions.append(i)
    return answers, positions, items


def _results(answers: Sequence[bytes | None]) -> bytes:
    return b'{"results":[' + b",".join(answers) + b"]}"  # type: ignore[arg-type]


class AlignmentService:
    """Async façade over an ``Aligner`` with caching and micro-batched searches."""

    def __init__(self, aligner: Aligner, cache: ResponseCache, metrics: Metrics,
                 settings: Settings) -> None:
        self.aligner = aligner
        self.cache = cache
        self.metrics = metrics
        self._prefix = f"{settings.cache_namespace}:{aligner.model_version}:"
        self._max_candidates = settings.max_request_candidates
        self._chunk_candidates = settings.chunk_candidates
        self._max_batch = settings.max_batch_size
        # One worker: searches and matmuls already use BLAS/OpenMP threads. OpenMP's thread count
        # is per calling thread, so the worker sets its own when it starts.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mimea-search",
                                            initializer=set_threads, initargs=(settings.threads,))
        window = settings.batch_window_ms / 1000.0
        self._candidates = MicroBatcher(
            self._candidates_bytes, self._executor, max_batch=settings.max_batch_size,
            window_s=window, on_batch=lambda n, s: metrics.observe_batch("candidates", n, s),
            cost=lambda query: query[1], max_cost=settings.chunk_candidates)
        self._align = MicroBatcher(
            self._align_bytes, self._executor, max_batch=settings.max_batch_size,
            window_s=window, on_batch=lambda n, s: metrics.observe_batch("align", n, s))
        self._alignment = MicroBatcher(
            self._alignment_bytes, self._executor, max_batch=settings.max_batch_size,
            window_s=window, on_batch=lambda n, s: metrics.observe_batch("alignment", n, s))
        kinds = ("candidates", "align", "alignment")
        self._hits = {kind: metrics.cache_hits.labels(kind) for kind in kinds}
        self._misses = {kind: metrics.cache_misses.labels(kind) for kind in kinds}

    # ---------------------------------------------------------------------- resolution

    def resolve(self, uri: str) -> int:
        """Row of ``uri``; unknown → 404 with suggestions (bounded to a few ms and memoised,
        so computed in place: a thread hop would cost more than it saves)."""
        row = self.aligner.directory.row_of.get(uri)
        if row is None:
            raise EntityNotFound(uri, self.aligner.directory.suggest(uri))
        return row

    def ranking(self, metric: Ranking | None, csls: bool | None = None) -> Ranking:
        """The ranking a candidates request asks for: ``metric``, else the deprecated ``csls``
        flag (true: csls, false: cosine), else the model's default; 422 if it is not served."""
        if csls is not None:
            alias: Ranking = "csls" if csls else "cosine"
            if metric is not None and metric != alias:
                raise ServiceError(422, "conflicting_metric",
                                   f"csls={str(csls).lower()} (deprecated) asks for {alias}, "
                                   f"metric for {metric}: send metric alone")
            metric = alias
        chosen = metric or self.aligner.rankings.default
        self.aligner.rankings.check(chosen)
        return chosen

    def check_cost(self, entities: int, k: int) -> None:
        """422 for a request asking for more than ``max_request_candidates`` candidates."""
        asked = entities * k
        if asked > self._max_candidates:
            raise ServiceError(
                422, "too_many_candidates",
                f"{entities} entities x k={k} asks for {asked} candidates; at most "
                f"{self._max_candidates} per request (MIMEA_MAX_REQUEST_CANDIDATES): lower k "
                f"or split the batch",
                {"entities": entities, "k": k, "candidates": asked,
                 "limit": self._max_candidates})

    def resolve_pair(self, source: str, target: str, *, where: str = "") -> tuple[int, int]:
        s, t = self.resolve(source), self.resolve(target)
        kgs = self.aligner.directory.kgs
        if kgs[s] == kgs[t]:
            raise ServiceError(422, "same_kg",
                               f"{where}source {source!r} and target {target!r} are both in "
                               f"KG{int(kgs[s])}; alignment pairs one entity of each KG")
        return s, t

    # ------------------------------------------------------------------------ answers

    def _candidates_bytes(self, queries: Sequence[tuple[int, int, Ranking]]) -> list[bytes]:
        return [_dumps(r) for r in self.aligner.candidates_batch(queries)]

    def _align_bytes(self, pairs: Sequence[tuple[int, int]]) -> list[bytes]:
        return [_dumps(r) for r in self.aligner.align_batch(pairs)]

    def _alignment_bytes(self, queries: Sequence[tuple[int, float | None]]) -> list[bytes]:
        return [_dumps(r) for r in self.aligner.alignment_batch(queries)]

    async def _cached(self, kind: str, keys: list[str], items: list[Any],
                      batcher: MicroBatcher[Any, bytes], chunk: int) -> list[bytes]:
        """Cached answers for ``keys``; the misses are computed ``chunk`` at a time, each
        chunk queued only once the previous one is answered."""
        answers = await self.cache.get_many(keys)
        missing = [i for i, a in enumerate(answers) if a is None]
        if len(missing) < len(keys):
            self._hits[kind].inc(len(keys) - len(missing))
        if missing:
            self._misses[kind].inc(len(missing))
        for lo in range(0, len(missing), chunk):
            part = missing[lo:lo + chunk]
            computed = await batcher.submit_many([items[i] for i in part])
            for i, value in zip(part, computed, strict=True):
                answers[i] = value
            await self.cache.set_many({keys[i]: answers[i] for i in part})  # type: ignore[misc]
        return answers  # type: ignore[return-value]

    def _candidates_chunk(self, k: int) -> int:
        return max(1, min(self._max_batch, self._chunk_candidates // k))

    def _candidates_key(self, row: int, k: int, ranking: Ranking) -> str:
        return f"{self._prefix}cand:{row}:{k}:{ranking}"

    def _align_key(self, s: int, t: int) -> str:
        return f"{self._prefix}align:{s}:{t}"

    async def candidates(self, entity: str, k: int, ranking: Ranking) -> bytes:
        self.check_cost(1, k)
        row = self.resolve(entity)
        key = self._candidates_key(row, k, ranking)
        return (await self._cached("candidates", [key], [(row, k, ranking)], self._candidates,
                                   1))[0]

    async def candidates_batch(self, entities: Sequence[str], k: int,
                               ranking: Ranking) -> bytes:
        """Every entity's answer in order; an unknown one is its error envelope. The cost
        limit counts every entity sent: it is checked before any work."""
        self.check_cost(len(entities), k)
        answers, positions, items = _resolve_each(
            entities, lambda _, entity: (self.resolve(entity), k, ranking))
        keys = [self._candidates_key(*item) for item in items]
        found = await self._cached("candidates", keys, items, self._candidates,
                                   self._candidates_chunk(k))
        for i, answer in zip(positions, found, strict=True):
            answers[i] = answer
        return _results(answers)

    async def align(self, source: str, target: str) -> bytes:
        pair = self.resolve_pair(source, target)
        return (await self._cached("align", [self._align_key(*pair)], [pair], self._align,
                                   1))[0]

    async def align_batch(self, pairs: Sequence[tuple[str, str]]) -> bytes:
        """Every pair's answer in order; an unknown entity or a pair within one KG is its
        error envelope, whose message names the pair's position."""
        answers, positions, items = _resolve_each(
            pairs, lambda i, pair: self.resolve_pair(*pair, where=f"pairs[{i}]: "))
        keys = [self._align_key(*item) for item in items]
        found = await self._cached("align", keys, items, self._align, self._max_batch)
        for i, answer in zip(positions, found, strict=True):
            answers[i] = answer
        return _results(answers)

    def _served_alignment(self) -> ServedAlignment:
        """The checkpoint's decisions; 404 for a checkpoint that stores none."""
        alignment = self.aligner.alignment
        if alignment is None:
            raise ServiceError(
                404, "no_decisions",
                "this checkpoint stores no decided alignment (written before decisions "
                "existed, or trained without validation pairs): store them with `mimea align "
                "--checkpoint CKPT --store` and restart the service")
        return alignment

    def _alignment_key(self, row: int, threshold: float | None) -> str:
        return f"{self._prefix}dec:{row}:{threshold}"

    async def alignment(self, entity: str, threshold: float | None) -> bytes:
        self._served_alignment()
        row = self.resolve(entity)
        return (await self._cached("alignment", [self._alignment_key(row, threshold)],
                                   [(row, threshold)], self._alignment, 1))[0]

    async def alignment_batch(self, entities: Sequence[str], threshold: float | None) -> bytes:
        """Every entity's decision in order; an unknown one is its error envelope."""
        self._served_alignment()
        answers, positions, items = _resolve_each(
            entities, lambda _, entity: (self.resolve(entity), threshold))
        keys = [self._alignment_key(*item) for item in items]
        found = await self._cached("alignment", keys, items, self._alignment, self._max_batch)
        for i, answer in zip(positions, found, strict=True):
            answers[i] = answer
        return _results(answers)

    def alignment_stream(self, threshold: float | None, decisions: Sequence[str] | None,
                         kg: int | None) -> Iterator[bytes]:
        """The whole alignment as JSON Lines, produced as it is sent (404 at once when the
        checkpoint stores none)."""
        return self._served_alignment().lines(threshold, decisions, kg)

    def entities(self, kg: int | None, prefix: str, limit: int) -> dict[str, Any]:
        directory = self.aligner.directory
        rows, more = directory.find(kg, prefix, limit)
        return {"entities": [{"entity": directory.uris[r], "kg": int(directory.kgs[r]),
                              "id": directory.ids[r]} for r in rows], "has_more": more}

    async def ready(self) -> dict[str, Any]:
        status = await self.cache.check()
        return {"status": "ready", "model_version": self.aligner.model_version,
                "cache": {"backend": self.cache.backend, "status": status}}

    async def aclose(self) -> None:
        await self._candidates.aclose()
        await self._align.aclose()
        await self._alignment.aclose()
        self._executor.shutdown(wait=True)
