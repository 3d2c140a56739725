"""FAISS index variants: exact flat agrees with numpy; HNSW and IVF serve the same API."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.index import build_index
from service.main import create_app
from service.settings import Settings


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_finds_self_neighbours(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = build_index(x, kind=kind, ivf_nprobe=16)  # type: ignore[arg-type]
    scores, ids = index.search(x[:50], 5)
    assert ids.shape == (50, 5)
    recall = float(np.mean(ids[:, 0] == np.arange(50)))
    assert recall >= (1.0 if kind == "flat" else 0.9)
    if kind == "flat":
        exact = np.sort(x[:50] @ x.T, axis=1)[:, ::-1][:, :5]
        np.testing.assert_allclose(scores, exact, atol=1e-5)


def test_search_caps_k_at_index_size() -> None:
    x = np.eye(3, dtype=np.float32)
    _, ids = build_index(x).search(x, 10)
    assert ids.shape == (3, 3)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_serves_the_api(make_settings: Callable[..., Settings], synthetic,
                                          kind: str) -> None:
    with TestClient(create_app(make_settings(index=kind))) as client:
        assert client.get("/model").json()["index"] == kind
        sources = [s for s, _ in synthetic.gold[:50]]
        for csls in (False, True):
            body = client.post("/candidates:batch",
                               json={"entities": sources, "k": 5, "csls": csls}).json()
            hits = sum(r["candidates"][0]["entity"] == t
                       for r, (_, t) in zip(body["results"], synthetic.gold[:50], strict=True))
            assert hits >= 40
        body = client.get(f"/candidates/{sources[0]}", params={"k": 1000, "csls": True}).json()
        assert 0 < len(body["candidates"]) <= 320
