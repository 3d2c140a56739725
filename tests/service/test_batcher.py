"""Micro-batching merges concurrent submissions, keeps groups whole and propagates errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import MicroBatcher


def test_concurrent_submissions_are_merged_in_order() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def square(items: Sequence[int]) -> list[int]:
        gate.wait(1)  # hold the first call so that the rest queue up behind it
        calls.append(list(items))
        return [i * i for i in items]

    async def scenario() -> list[int]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(square, pool, max_batch=64)
            first = asyncio.create_task(batcher.submit(0))
            await asyncio.sleep(0.01)
            rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
            await asyncio.sleep(0.01)
            gate.set()
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


def test_window_refills_batches_without_delaying_a_lone_request() -> None:
    """Closed-loop clients that come back after their answer are merged into full batches."""
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
            batcher = MicroBatcher(echo, pool, max_batch=64, window_s=0.05)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await batcher.submit(0)  # idle service: answered at once, no window
            lone = loop.time() - start
            calls.clear()
            await asyncio.gather(*(client(batcher, 5) for _ in range(8)))
            await batcher.aclose()
            return lone

    assert asyncio.run(scenario()) < 0.04
    assert sum(calls) == 40
    assert max(calls) == 8 and calls.count(8) >= 4


@pytest.mark.parametrize("groups,max_cost,expected", [
    ([[3], [3], [3]], 6, [[3, 3], [3]]),          # two groups fit, the third waits
    ([[3], [3], [3]], 5, [[3], [3], [3]]),        # one at a time
    ([[9], [1]], 5, [[9], [1]]),                  # a group over the budget still runs, alone
    ([[1, 1], [1, 1]], None, [[1, 1, 1, 1]]),     # no cost budget: only max_batch applies
])
def test_cost_budget_bounds_each_call(groups: list[list[int]], max_cost: int | None,
                                      expected: list[list[int]]) -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def record(items: Sequence[int]) -> list[int]:
        gate.wait(1)
        calls.append(list(items))
        return list(items)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(record, pool, max_batch=64, cost=lambda item: item,
                                   max_cost=max_cost)
            first = asyncio.create_task(batcher.submit(0))  # holds the worker
            await asyncio.sleep(0.01)
            rest = [asyncio.create_task(batcher.submit_many(g)) for g in groups]
            await asyncio.sleep(0.01)
            gate.set()
            await asyncio.gather(first, *rest)
            await batcher.aclose()

    asyncio.run(scenario())
    assert calls[1:] == expected
