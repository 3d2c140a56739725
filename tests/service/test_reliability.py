"""Hostile or careless clients: every request is bounded, and none can starve the others."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import mimea.service.scoring as scoring_module
from mimea.service.limits import BodyLimitMiddleware
from mimea.service.main import create_app
from mimea.service.settings import Settings
from mimea.service.suggest import Suggester
from tests.service.redis_process import RedisProcess

KG1_MID = "/m/0abc000"
KG1_URI = "http://example.org/resource/A_(b)1"
KG2_URI = "http://dbpedia.org/resource/Entity_1"


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, behind an in-process async client (concurrent requests)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield client


# ------------------------------------------------------------------------- request cost

@pytest.mark.parametrize("entities,k,limit,status", [
    (1, 1000, 20_000, 200),          # the largest single request
    (20, 1000, 20_000, 200),         # exactly at the limit
    (21, 1000, 20_000, 422),         # one entity over it
    (1024, 1000, 20_000, 422),       # the probe: 1,024 x 1,000
    (1024, 19, 20_000, 200),         # a full batch at a small k
    (1, 600, 500, 422),              # a single GET is bounded too
])
def test_candidate_count_is_bounded_per_request(make_settings: Callable[..., Settings],
                                                synthetic, entities: int, k: int, limit: int,
                                                status: int) -> None:
    sources = [u for u, kg in zip(synthetic.uris, synthetic.kgs, strict=True) if kg == 1]
    with TestClient(create_app(make_settings(max_request_candidates=limit))) as client:
        if entities == 1:
            response = client.get(f"/candidates/{sources[0]}", params={"k": k})
        else:
            response = client.post("/candidates:batch",
                                   json={"entities": (sources * 4)[:entities], "k": k})
    if status == 200:
        assert response.status_code == 200, response.text
        return
    error = envelope(response, 422, "too_many_candidates")
    assert f"at most {limit}" in error["message"] and "MIMEA_MAX_REQUEST_CANDIDATES" in \
        error["message"]
    assert error["details"] == {"entities": entities, "k": k, "candidates": entities * k,
                                "limit": limit}


def test_modality_similarity_is_exact_in_small_steps(client: TestClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded row-wise steps give what one dense computation gives, at any step size."""
    scorer = client.app.state.aligner.scorer  # type: ignore[attr-defined]
    left = np.repeat([0, 5, 301], [4, 0, 40])
    right = np.concatenate([[400, 401, 402, 310], np.arange(0, 40)])
    cosine = np.zeros(len(left), dtype=np.float32)
    whole = scorer.score_pairs(left, right, cosine)
    monkeypatch.setattr(scoring_module, "SIMS_FLOATS", 50)  # a step of 1 to 3 pairs
    stepped = scorer.score_pairs(left, right, cosine)
    np.testing.assert_array_equal(stepped.modality, whole.modality)
    for mi, m in enumerate(scorer.modalities):
        table = scorer.tables[m].astype(np.float64)
        table /= np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        for p, (a, b) in enumerate(zip(left, right, strict=True)):
            assert whole.present[p, mi] == (scorer.mask[a, mi] and scorer.mask[b, mi])
            if whole.present[p, mi]:
                assert whole.modality[p, mi] == pytest.approx(float(table[a] @ table[b]),
                                                              abs=1e-5)


def test_big_batch_is_chunked_and_other_requests_interleave(
        make_settings: Callable[..., Settings], synthetic) -> None:
    """A batch of 40 x k=5 with 10-candidate chunks takes 20 worker calls; a single request
    sent meanwhile is answered before the batch's last chunk, not after it."""
    sources = [u for u, kg in zip(synthetic.uris, synthetic.kgs, strict=True) if kg == 1][:40]
    lone = next(u for u, kg in zip(synthetic.uris, synthetic.kgs, strict=True) if kg == 2)
    app = create_app(make_settings(chunk_candidates=10))
    calls: list[list[int]] = []

    async def scenario() -> None:
        async with serving(app) as client:
            aligner = app.state.aligner
            compute = aligner.candidates_batch

            def slow(queries: Sequence[tuple[int, int, str]]) -> list[dict[str, Any]]:
                calls.append([q[0] for q in queries])
                time.sleep(0.01)
                return compute(queries)

            aligner.candidates_batch = slow
            batch = asyncio.create_task(client.post(
                "/candidates:batch", json={"entities": sources, "k": 5}))
            await asyncio.sleep(0.05)
            single = await client.get(f"/candidates/{lone}", params={"k": 5})
            assert single.status_code == 200
            assert not batch.done()
            assert (await batch).status_code == 200

    asyncio.run(scenario())
    lone_row = synthetic.uris.index(lone)
    assert max(len(c) for c in calls) <= 2
    assert sum(len(c) for c in calls) == 41
    assert any(lone_row in c for c in calls[:-1])


# ---------------------------------------------------------------------------- unknown ids

def test_unknown_id_suggestions_rank_the_closest_first(client: TestClient) -> None:
    cases = [  # (unknown identifier, the suggestion expected first)
        ("http://example.org/resource/A_(b)1x", KG1_URI),                 # extra character
        ("http://example.org/resourse/A_(b)1", KG1_URI),                  # typo mid-way
        ("/m/0abc00", "/m/0abc000"),                                      # truncated mid
        ("http://dbpedia.org/resource/Entity_1_", KG2_URI),              # trailing junk
        ("HTTP://dbpedia.org/resource/Entity_1", KG2_URI),               # case slip
        ("ttp://dbpedia.org/resource/Entity_1", KG2_URI),                # first char lost
    ]
    for probe, expected in cases:
        error = envelope(client.get(f"/candidates/{probe}"), 404, "entity_not_found")
        assert error["details"]["suggestions"][0] == expected, (probe, error)


@pytest.mark.parametrize("probe", ["zzzzzzzz", "é", "ab", "x" * 4096, "\U0001f600" * 300])
def test_unrelated_ids_get_no_or_few_suggestions(client: TestClient, probe: str) -> None:
    error = envelope(client.post("/align", json={"source": probe, "target": KG2_URI}), 404,
                     "entity_not_found")
    assert len(error["details"]["suggestions"]) <= 5


def test_unknown_id_answer_is_memoised() -> None:
    suggester = Suggester([f"http://x.org/r/{i}_{i * 7919 % 1000}" for i in range(5000)])
    first = suggester.suggest("http://x.org/r/12_q")
    hits = suggester.suggest.cache_info().hits
    assert suggester.suggest("http://x.org/r/12_q") == first
    assert suggester.suggest.cache_info().hits == hits + 1


def test_suggestions_are_bounded_in_time() -> None:
    """Identifiers that all share one long prefix: the worst case for a prefix window."""
    suggester = Suggester([f"http://example.org/{'a' * 200}/{i}" for i in range(20_000)])
    start = time.perf_counter()
    for i in range(100):
        suggester.suggest(f"http://example.org/{'a' * 200}/{i}q")
    assert (time.perf_counter() - start) / 100 < 0.05  # 27 ms each before, on a lighter case


# ----------------------------------------------------------------------------- body size

@pytest.mark.parametrize("case,headers,body,status,code", [
    ("declared, wrong key", {"X-API-Key": "wrong"}, b"x" * 5000, 413, "payload_too_large"),
    ("declared, right key", {"X-API-Key": "k"}, b"x" * 5000, 413, "payload_too_large"),
    ("streamed", {"X-API-Key": "k"}, [b"x" * 1000] * 6, 413, "payload_too_large"),
    ("small, wrong key", {"X-API-Key": "wrong"}, b"{}", 401, "unauthorized"),
    ("small streamed", {"X-API-Key": "k"}, [b'{"source": "a",', b' "target": "b"}'], 404,
     "entity_not_found"),
])
def test_body_size_is_checked_before_anything_else(make_settings: Callable[..., Settings],
                                                   case: str, headers: dict[str, str],
                                                   body: bytes | list[bytes], status: int,
                                                   code: str) -> None:
    content = body if isinstance(body, bytes) else iter(body)  # an iterator is sent chunked
    with TestClient(create_app(make_settings(api_key="k", max_body_bytes=4096))) as client:
        response = client.post("/align", content=content,
                               headers={**headers, "Content-Type": "application/json"})
    error = envelope(response, status, code)
    if status == 413:
        assert "4096 bytes" in error["message"] and response.headers["connection"] == "close"


def test_declared_oversize_body_is_never_read() -> None:
    """The middleware answers from the headers alone: the app and ``receive`` are not used."""
    touched: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        touched.append("app")

    async def receive() -> dict[str, Any]:
        touched.append("receive")
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/align",
             "headers": [(b"content-length", b"200000000")]}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=1024)(scope, receive, send))
    assert touched == [] and sent[0]["status"] == 413


# -------------------------------------------------------------------------- Redis killed

def test_redis_killed_under_load_fails_no_request(make_settings: Callable[..., Settings],
                                                  private_redis: RedisProcess,
                                                  synthetic) -> None:
    """16 concurrent clients keep going while Redis is stopped mid-run: every answer is 200."""
    app = create_app(make_settings(redis_url=private_redis.url, redis_retry_s=0.2,
                                   redis_timeout_s=0.25))
    uris = synthetic.uris
    statuses: list[int] = []
    killed = threading.Event()

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        for i in range(25):
            uri = uris[(offset * 25 + i) % len(uris)]
            statuses.append((await client.get(f"/candidates/{quote(uri, safe='/:')}",
                                              params={"k": 3})).status_code)

    async def killer() -> None:
        while len(statuses) < 100:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(private_redis.stop)
        killed.set()

    async def scenario() -> None:
        async with serving(app) as client:
            await asyncio.gather(killer(), *(worker(client, w) for w in range(16)))
            assert (await client.get("/ready")).json()["cache"]["status"] == "degraded"

    asyncio.run(scenario())
    assert killed.is_set() and len(statuses) == 400
    assert set(statuses) == {200}

