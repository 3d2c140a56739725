"""Cache behaviour: the in-process LRU, a real Redis, and Redis going down and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient

from mimea.service.cache import LRUCache
from mimea.service.main import create_app
from mimea.service.settings import Settings
from tests.service.redis_process import RedisProcess

ENTITY = "/m/0abc000"
OTHER = "http://dbpedia.org/resource/Entity_1"


def hits(client: TestClient, kind: str = "candidates") -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("mimea_cache_hits_total", {"kind": kind}) or 0.0


def misses(client: TestClient, kind: str = "candidates") -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("mimea_cache_misses_total", {"kind": kind}) or 0.0


def cache_errors(client: TestClient) -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("mimea_cache_errors_total") or 0.0


def test_lru_evicts_oldest_and_expires() -> None:
    async def scenario() -> None:
        cache = LRUCache(max_entries=2, ttl_s=0.05)
        await cache.set_many({"a": b"1", "b": b"2"})
        assert await cache.get_many(["a"]) == [b"1"]  # a is now the most recent
        await cache.set_many({"c": b"3"})
        assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
        await asyncio.sleep(0.06)
        assert await cache.get_many(["a", "c"]) == [None, None]
        disabled = LRUCache(max_entries=0, ttl_s=10)
        await disabled.set_many({"a": b"1"})
        assert await disabled.get_many(["a"]) == [None] and disabled.status == "disabled"

    asyncio.run(scenario())


def test_memory_cache_hit_returns_same_answer(client: TestClient) -> None:
    before_hits, before_misses = hits(client), misses(client)
    first = client.get(f"/candidates/{OTHER}", params={"k": 3, "metric": "csls"})
    second = client.get(f"/candidates/{OTHER}", params={"k": 3, "metric": "csls"})
    assert first.content == second.content
    assert misses(client) == before_misses + 1 and hits(client) == before_hits + 1


def test_cache_keys_include_the_metric(client: TestClient) -> None:
    """Each metric is its own entry; the default shares the entry of the metric it names."""
    before = misses(client)
    answers = {metric: client.get(f"/candidates/{ENTITY}", params={"k": 6, "metric": metric})
               for metric in ("cosine", "csls", "sinkhorn")}
    assert misses(client) == before + 3
    assert {answers[m].json()["metric"] for m in answers} == {"cosine", "csls", "sinkhorn"}
    hits_before = hits(client)
    assert client.get(f"/candidates/{ENTITY}", params={"k": 6}).content == \
        answers["sinkhorn"].content
    assert hits(client) == hits_before + 1 and misses(client) == before + 3


def test_redis_hit_and_miss(make_settings: Callable[..., Settings], redis_url: str,
                            namespace: str, synthetic) -> None:
    settings = make_settings(redis_url=redis_url, cache_namespace=namespace, cache_ttl_s=120)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").json()["cache"] == {"backend": "redis", "status": "ok"}
        first = client.get(f"/candidates/{ENTITY}", params={"k": 4})
        second = client.get(f"/candidates/{ENTITY}", params={"k": 4})
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        assert (misses(client), hits(client)) == (1.0, 1.0)
        pair = {"source": ENTITY, "target": OTHER}
        assert client.post("/align", json=pair).content == client.post("/align", json=pair).content
        assert (misses(client, "align"), hits(client, "align")) == (1.0, 1.0)
        # Batch routes share the single routes' entries: one cached, one new.
        batch = client.post("/candidates:batch", json={"entities": [ENTITY, OTHER], "k": 4})
        assert batch.json()["results"][0] == first.json()
        assert (misses(client), hits(client)) == (2.0, 2.0)
        assert cache_errors(client) == 0.0
    keys = redis.Redis.from_url(redis_url).keys(f"{namespace}:*")
    assert len(keys) == 3
    assert all(k.startswith(f"{namespace}:{synthetic.model_version}:".encode()) for k in keys)
    assert 0 < redis.Redis.from_url(redis_url).ttl(keys[0]) <= 120


def test_redis_down_serves_uncached_then_recovers(make_settings: Callable[..., Settings],
                                                  private_redis: RedisProcess) -> None:
    settings = make_settings(redis_url=private_redis.url, redis_retry_s=0.2,
                             redis_timeout_s=0.5)
    with TestClient(create_app(settings)) as client:
        client.get(f"/candidates/{ENTITY}")
        client.get(f"/candidates/{ENTITY}")
        assert hits(client) == 1.0

        private_redis.stop()
        for _ in range(3):
            assert client.get(f"/candidates/{ENTITY}", params={"k": 2}).status_code == 200
            assert client.post("/align", json={"source": ENTITY, "target": OTHER}
                               ).status_code == 200
        assert client.get("/ready").json()["cache"] == {"backend": "redis",
                                                        "status": "degraded"}
        assert hits(client) == 1.0

        private_redis.start()
        time.sleep(0.25)  # past redis_retry_s
        client.get(f"/candidates/{ENTITY}", params={"k": 3})
        client.get(f"/candidates/{ENTITY}", params={"k": 3})
        assert hits(client) == 2.0
        assert client.get("/ready").json()["cache"]["status"] == "ok"


def test_redis_down_at_startup_still_serves(make_settings: Callable[..., Settings],
                                            free_port: Callable[[], int]) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_s=5)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ready").json()["cache"]["status"] == "degraded"
        assert client.get(f"/candidates/{ENTITY}").status_code == 200


def test_redis_failures_are_counted_in_metrics(make_settings: Callable[..., Settings],
                                               free_port: Callable[[], int]) -> None:
    """Each failed Redis call counts, also while the degraded cache answers every request."""
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             redis_retry_s=0.001)
    with TestClient(create_app(settings)) as client:
        at_start = cache_errors(client)
        assert at_start >= 1  # the startup probe
        time.sleep(0.01)  # past redis_retry_s: the request tries Redis again
        assert client.get(f"/candidates/{ENTITY}").status_code == 200
        assert cache_errors(client) > at_start  # the read of the answer, maybe its write
        assert "mimea_cache_errors_total" in client.get("/metrics").text
