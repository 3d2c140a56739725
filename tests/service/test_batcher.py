"""Micro-batching merges concurrent submissions, keeps groups whole and propagates errors.

The tests order events with explicit signals (the worker's first call holds until released),
not with sleeps, so a loaded machine changes their duration but not their outcome.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from mimea.service.batcher import MicroBatcher

WAIT_S = 30.0  # bounds every wait on a signal: a broken batcher fails instead of hanging


class HeldWorker:
    """Holds the worker's first call until released, so that later submissions queue."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        """Called by the batch function: signal the start, then wait for the release."""
        self.started.set()
        self.released.wait(WAIT_S)

    async def busy(self) -> None:
        """Return once the first call is running in the worker (it has left the queue)."""
        assert await asyncio.to_thread(self.started.wait, WAIT_S)


def test_concurrent_submissions_are_merged_in_order() -> None:
    calls: list[list[int]] = []
    worker = HeldWorker()

    def square(items: Sequence[int]) -> list[int]:
        worker.hold()  # the rest queue up behind the first call
        calls.append(list(items))
        return [i * i for i in items]

    async def scenario() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(square, pool, max_batch=64)
            first = asyncio.create_task(batcher.submit(0))
            await worker.busy()
            rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
            await asyncio.sleep(0)  # each task runs up to its wait: all ten are queued
            worker.released.set()
            out = [await first, *[await t for t in rest]]
            await batcher.aclose()
            return out

    assert asyncio.run(scenario()) == [i * i for i in range(11)]
    assert calls == [[0], list(range(1, 11))]


def test_groups_are_never_split_and_respect_max_batch() -> None:
    calls: list[list[int]] = []

    def identity(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return list(items)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(identity, pool, max_batch=4)
            results = await asyncio.gather(batcher.submit_many([1, 2, 3]),
                                           batcher.submit_many([4, 5, 6]),
                                           batcher.submit_many(list(range(7, 17))))
            assert results == [[1, 2, 3], [4, 5, 6], list(range(7, 17))]
            await batcher.aclose()

    asyncio.run(scenario())
    assert calls == [[1, 2, 3], [4, 5, 6], list(range(7, 17))]


def test_errors_reach_every_caller_of_the_batch() -> None:
    def fail(items: Sequence[int]) -> list[int]:
        raise ValueError("boom")

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(fail, pool, max_batch=8)
            results = await asyncio.gather(batcher.submit(1), batcher.submit(2),
                                           return_exceptions=True)
            assert all(isinstance(r, ValueError) for r in results)
            await batcher.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                await batcher.submit(3)

    asyncio.run(scenario())


WINDOW_S = 5.0


def test_window_refills_batches_without_delaying_a_lone_request() -> None:
    """Closed-loop clients that come back after their answer are merged into full batches.

    The window is long, so that clients slowed by a loaded machine still come back within it,
    and a lone request that waited for it would take seconds.
    """
    calls: list[int] = []

    def echo(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        return list(items)

    async def client(batcher: MicroBatcher[int, int], rounds: int) -> None:
        for i in range(rounds):
            await batcher.submit(i)
            await asyncio.sleep(0.002)  # the client's round trip before its next request

    async def scenario() -> float:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(echo, pool, max_batch=64, window_s=WINDOW_S)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await batcher.submit(0)  # idle service: answered at once, no window
            lone = loop.time() - start
            calls.clear()
            await asyncio.gather(*(client(batcher, 5) for _ in range(8)))
            await batcher.aclose()
            return lone

    assert asyncio.run(scenario()) < WINDOW_S / 2
    assert calls == [8] * 5  # every round of the eight clients in one call


@pytest.mark.parametrize("groups,max_cost,expected", [
    ([[3], [3], [3]], 6, [[3, 3], [3]]),          # two groups fit, the third waits
    ([[3], [3], [3]], 5, [[3], [3], [3]]),        # one at a time
    ([[9], [1]], 5, [[9], [1]]),                  # a group over the budget still runs, alone
    ([[1, 1], [1, 1]], None, [[1, 1, 1, 1]]),     # no cost budget: only max_batch applies
])
def test_cost_budget_bounds_each_call(groups: list[list[int]], max_cost: int | None,
                                      expected: list[list[int]]) -> None:
    calls: list[list[int]] = []
    worker = HeldWorker()

    def record(items: Sequence[int]) -> list[int]:
        worker.hold()
        calls.append(list(items))
        return list(items)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(record, pool, max_batch=64, cost=lambda item: item,
                                   max_cost=max_cost)
            first = asyncio.create_task(batcher.submit(0))
            await worker.busy()
            rest = [asyncio.create_task(batcher.submit_many(g)) for g in groups]
            await asyncio.sleep(0)  # every group is queued
            worker.released.set()
            await asyncio.gather(first, *rest)
            await batcher.aclose()

    asyncio.run(scenario())
    assert calls[1:] == expected
