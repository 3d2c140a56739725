"""Micro-batching: concurrent requests are merged into one synchronous batch call off the loop.

While one batch runs in the worker thread, new submissions queue up and form the next batch, so
an idle service answers a lone request at once and a busy one searches many queries per index
call (one matrix product instead of many). A group submitted together is never split across
calls. A call holds at most ``max_batch`` items and, when items have a ``cost`` (candidates
asked for), at most ``max_cost`` of it, so that no call holds the worker for long; callers with
more work submit it as several groups, one after another, and other requests interleave.

An optional window (``window_s``) makes a busy batcher wait, at most that long, until as many
queries are queued as were just answered plus those already waiting: under closed-loop load the
clients of the last batch come back within a round trip, so batches stay full instead of
settling into two half-size batches that alternate (each scanning the whole index). A lone
request on an idle service is never delayed: the wait only applies while the queue is shorter
than that target.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Merge concurrent ``submit`` calls into calls of ``fn(items) -> results`` (same order)."""

    def __init__(self, fn: Callable[[Sequence[T]], list[R]], executor: Executor, *,
                 max_batch: int, window_s: float = 0.0,
                 on_batch: Callable[[int, float], None] | None = None,
                 cost: Callable[[T], int] | None = None, max_cost: int | None = None) -> None:
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._window_s = window_s
        self._on_batch = on_batch
        self._cost = cost
        self._max_cost = max_cost
        self._pending: deque[tuple[list[T], asyncio.Future[list[R]], int]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._queued = 0  # items in ``_pending``
        self._target = 1  # queue length worth waiting for (see the module docstring)
        self._enough: asyncio.Event | None = None

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: list[T]) -> list[R]:
        """Queue ``items`` as one group (answered by a single call) and wait for the results."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        cost = sum(map(self._cost, items)) if self._cost is not None else 0
        self._pending.append((items, future, cost))
        self._queued += len(items)
        if self._enough is not None and self._queued >= self._target:
            self._enough.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self._window_s > 0 and self._queued < self._target:
                await self._fill()
            groups = self._take()
            items = [item for group, _, _ in groups for item in group]
            start = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
            except Exception as exc:  # the callers get the error; the drainer keeps going
                for _, future, _ in groups:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._target = min(self._max_batch, len(items) + self._queued)
            if self._on_batch is not None:
                self._on_batch(len(items), loop.time() - start)
            offset = 0
            for group, future, _ in groups:
                if not future.done():
                    future.set_result(results[offset:offset + len(group)])
                offset += len(group)

    async def _fill(self) -> None:
        """Wait until ``_target`` items are queued or the window ends, whichever is first."""
        self._enough = asyncio.Event()
        try:
            await asyncio.wait_for(self._enough.wait(), self._window_s)
        except TimeoutError:
            pass
        finally:
            self._enough = None

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]], int]]:
        """The next call's groups: whole groups within ``max_batch`` and ``max_cost``."""
        taken: list[tuple[list[T], asyncio.Future[list[R]], int]] = []
        count = cost = 0
        max_cost = self._max_cost if self._max_cost is not None else float("inf")
        while self._pending:
            items, _, group_cost = self._pending[0]
            if taken and (count + len(items) > self._max_batch
                          or cost + group_cost > max_cost):
                break
            taken.append(self._pending.popleft())
            count += len(items)
            cost += group_cost
        self._queued -= count
        return taken

    async def aclose(self) -> None:
        """Stop accepting work and wait for the batch in flight."""
        self._closed = True
        if self._drainer is not None:
            try:
                await self._drainer
            except Exception:  # pragma: no cover - errors were handed to callers
                logger.debug("drainer ended with an error", exc_info=True)
