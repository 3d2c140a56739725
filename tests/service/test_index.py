"""FAISS index variants: exact flat agrees with numpy; HNSW and IVF serve the same API."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service import index as index_module
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


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around n/20 centres: many near-ties among each query's neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_bfloat16_scan_returns_the_float32_results(k: int) -> None:
    x = _clustered(4000, 256, seed=0)
    queries = _clustered(300, 256, seed=1)
    exact_scores, exact_ids = build_index(x).search(queries, k)
    scores, ids = build_index(x, precision="bfloat16").search(queries, k)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    # The same neighbours in the same order, up to float32 ties (sums taken in another order).
    np.testing.assert_allclose(np.take_along_axis(queries @ x.T, ids, axis=1), exact_scores,
                               atol=1e-5)
    assert np.mean(ids == exact_ids) > 0.999


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(100, 16, seed=0)
    for fast, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(index_module, "fast_bfloat16", lambda fast=fast: fast)
        assert build_index(x, precision="auto").precision == expected
    assert build_index(x, kind="hnsw", precision="bfloat16").precision == "float32"


def test_bfloat16_scores_alone_would_misorder_neighbours() -> None:
    """Why the shortlist is rescored: bfloat16 cosines tie and swap near neighbours."""
    x = torch.from_numpy(_clustered(4000, 256, seed=0))
    queries = torch.from_numpy(_clustered(300, 256, seed=1))
    exact = torch.topk(queries @ x.T, 10, dim=1).indices
    rounded = torch.topk(queries.bfloat16() @ x.bfloat16().T, 10, dim=1).indices
    assert (rounded != exact).any()


def test_bfloat16_scan_serves_the_same_candidates(make_settings: Callable[..., Settings],
                                                  synthetic) -> None:
    sources = [s for s, _ in synthetic.gold[:60]]
    answers = []
    for precision in ("float32", "bfloat16"):
        with TestClient(create_app(make_settings(search_precision=precision))) as client:
            assert client.get("/model").json()["search_precision"] == precision
            answers.append([[(c["entity"], c["score"]) for r in client.post(
                "/candidates:batch", json={"entities": sources, "k": 10, "csls": csls}
            ).json()["results"] for c in r["candidates"]] for csls in (False, True)])
    for exact, rescored in zip(*answers, strict=True):
        assert [e for e, _ in rescored] == [e for e, _ in exact]
        assert [s for _, s in rescored] == pytest.approx([s for _, s in exact], abs=1e-5)
