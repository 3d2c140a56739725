"""A real uvicorn process (``python -m mimea.service.cli serve``) queried over HTTP with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from bench.server_process import Server
from mimea.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # starts a server process


@pytest.fixture(scope="module")
def server(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = Server(synthetic.path, log, {"MIMEA_REDIS_URL": "", "MIMEA_THREADS": "1",
                                           "MIMEA_LOG_LEVEL": "INFO"}, startup_s=60)
    try:
        yield process.url
    finally:
        code = process.stop()
    # uvicorn re-raises SIGTERM after a graceful shutdown, so -15 is a clean exit too.
    assert code in (0, -15), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_server_answers_like_brute_force(server: str, synthetic) -> None:
    ckpt = load_checkpoint(synthetic.path)
    joint = ckpt.embeddings.joint.double().numpy()
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    kgs = np.asarray(ckpt.entities.kgs)
    kg2 = np.flatnonzero(kgs == 2)
    with httpx.Client(base_url=server, timeout=10) as http:
        for source, _ in synthetic.gold[:10]:
            row = ckpt.entities.uris.index(source)
            cos = joint[kg2] @ joint[row]
            order = np.argsort(-cos)[:5]
            body = http.get(f"/candidates/{source}", params={"k": 5, "metric": "cosine"}).json()
            assert [c["entity"] for c in body["candidates"]] == [
                ckpt.entities.uris[kg2[j]] for j in order]
            np.testing.assert_allclose([c["score"] for c in body["candidates"]], cos[order],
                                       atol=1e-5)
        source, target = synthetic.gold[0]
        pair = http.post("/align", json={"source": source, "target": target}).json()
        assert pair["cosine"] == pytest.approx(float(joint[ckpt.entities.uris.index(source)]
                                               @ joint[ckpt.entities.uris.index(target)]),
                                               abs=1e-5)


@pytest.mark.parametrize("entity", ["http://dbpedia.org/resource/What_turns_you_on%3F_#3",
                                    "http://dbpedia.org/resource/Who?_(band) 100%"])
def test_reserved_characters_work_when_percent_encoded(server: str, entity: str) -> None:
    """Identifiers holding %, ? or # are sent percent-encoded (the TestClient decodes twice)."""
    response = httpx.get(f"{server}/candidates/" + quote(entity, safe="/:"), params={"k": 2})
    assert response.status_code == 200, response.text
    assert response.json()["entity"] == entity


def test_server_errors_and_operations(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        missing = http.get("/candidates/%2Fm%2Fnothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == \
            "entity_not_found"
        assert http.get("/candidates/x", params={"k": 0}).status_code == 422
        assert http.get("/candidates/" + "y" * 6000).status_code == 404
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/model").json()["entities"] == {"kg1": 300, "kg2": 320}
        metrics = http.get("/metrics").text
        assert "mimea_requests_total" in metrics and "mimea_cache_misses_total" in metrics


def test_server_merges_concurrent_requests(server: str, synthetic) -> None:
    """Concurrent clients get the same answers as sequential ones (micro-batching is exact)."""
    sources = [s for s, _ in synthetic.gold[20:60]]

    async def fetch_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=20) as http:
            responses = await asyncio.gather(
                *(http.get(f"/candidates/{s}", params={"k": 3}) for s in sources))
        return [r.json() for r in responses]

    concurrent = asyncio.run(fetch_all())
    with httpx.Client(base_url=server, timeout=10) as http:
        batch = http.post("/candidates:batch",
                          json={"entities": sources, "k": 3}).json()
    assert concurrent == batch["results"]
