"""Index variants: exact flat agrees with dense scores under every ranking column, its
bfloat16 and int8 scans return the float32 results, HNSW and IVF serve the same API."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mimea.model.similarity import IVF_TRAIN_PER_LIST
from mimea.service import index as index_module
from mimea.service.index import build_index
from mimea.service.main import create_app
from mimea.service.settings import Settings


def _unit(n: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)))
    return torch.nn.functional.normalize(x.float(), dim=1)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_finds_self_neighbours(kind: str) -> None:
    x = _unit(500, 24, seed=0)
    index = build_index(x, torch.zeros(500, 1), kind=kind, ivf_nprobe=16)  # type: ignore[arg-type]
    cosine, ids = index.search(x[:50], 5, None)
    assert ids.shape == (50, 5)
    recall = float((ids[:, 0] == torch.arange(50)).float().mean())
    assert recall >= (1.0 if kind == "flat" else 0.9)
    if kind == "flat":
        exact = torch.sort(x[:50] @ x.T, dim=1, descending=True).values[:, :5]
        np.testing.assert_allclose(cosine, exact, atol=1e-5)


def test_ivf_trains_on_a_sample_of_the_keys() -> None:
    """Beyond IVF_TRAIN_PER_LIST keys a list, faiss's k-means takes a seeded sample; every
    key is still indexed and found."""
    x = _unit(6000, 24, seed=3)  # 6000 > 64 * 16
    index = build_index(x, torch.zeros(6000, 1), kind="ivf", ivf_nlist=16, ivf_nprobe=4)
    assert index.ann.cp.max_points_per_centroid == IVF_TRAIN_PER_LIST
    assert index.ann.ntotal == 6000
    _, ids = index.search(x[::60], 1, None)
    assert torch.equal(ids[:, 0], torch.arange(0, 6000, 60))


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("column", [None, 0, 1])
def test_flat_search_ranks_by_cosine_plus_the_column_bias(precision: str,
                                                          column: int | None) -> None:
    """An inner-product search over keys augmented with a bias column is the dense ranking."""
    keys, queries = _unit(3000, 64, seed=0), _unit(200, 64, seed=1)
    biases = 0.3 * torch.randn(3000, 2, generator=torch.Generator().manual_seed(2))
    index = build_index(keys, biases, precision=precision)  # type: ignore[arg-type]
    cosine, ids = index.search(queries, 10, column)
    dense = queries.double() @ keys.double().T
    keyed = dense + (biases[:, column].double() if column is not None else 0.0)
    expected = torch.topk(keyed, 10, dim=1).indices
    assert (ids == expected).float().mean() > 0.999
    np.testing.assert_allclose(cosine, dense.gather(1, ids), atol=1e-5)


def test_search_caps_k_at_index_size() -> None:
    x = torch.eye(3)
    _, ids = build_index(x, torch.zeros(3, 1)).search(x, 10, 0)
    assert ids.shape == (3, 3)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_serves_the_api(make_settings: Callable[..., Settings], synthetic,
                                          kind: str) -> None:
    with TestClient(create_app(make_settings(index=kind))) as client:
        assert client.get("/model").json()["index"] == kind
        sources = [s for s, _ in synthetic.gold[:50]]
        for metric in ("cosine", "csls", "sinkhorn"):
            body = client.post("/candidates:batch",
                               json={"entities": sources, "k": 5, "metric": metric}).json()
            hits = sum(r["candidates"][0]["entity"] == t
                       for r, (_, t) in zip(body["results"], synthetic.gold[:50], strict=True))
            assert hits >= 40
            body = client.get(f"/candidates/{sources[0]}",
                              params={"k": 1000, "metric": metric}).json()
            assert 0 < len(body["candidates"]) <= 320


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around n/20 centres: many near-ties among each query's neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_compressed_scan_returns_the_float32_results(precision: str, k: int) -> None:
    x = torch.from_numpy(_clustered(4000, 256, seed=0))
    queries = torch.from_numpy(_clustered(300, 256, seed=1))
    biases = torch.zeros(4000, 1)
    exact_scores, exact_ids = build_index(x, biases).search(queries, k, None)
    scores, ids = build_index(x, biases, precision=precision).search(  # type: ignore[arg-type]
        queries, k, None)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    # The same neighbours in the same order, up to float32 ties (sums taken in another order).
    np.testing.assert_allclose((queries @ x.T).gather(1, ids), exact_scores, atol=1e-5)
    assert (ids == exact_ids).float().mean() > 0.999


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x, biases = torch.from_numpy(_clustered(100, 16, seed=0)), torch.zeros(100, 1)
    for int8, bf16, expected in ((True, True, "int8"), (True, False, "int8"),
                                 (False, True, "bfloat16"), (False, False, "float32")):
        monkeypatch.setattr(index_module, "fast_int8", lambda int8=int8: int8)
        monkeypatch.setattr(index_module, "fast_bfloat16", lambda bf16=bf16: bf16)
        assert build_index(x, biases, precision="auto").precision == expected
    assert build_index(x, biases, kind="hnsw", precision="int8").precision == "float32"


def test_bfloat16_scores_alone_would_misorder_neighbours() -> None:
    """Why the shortlist is rescored: bfloat16 cosines tie and swap near neighbours."""
    x = torch.from_numpy(_clustered(4000, 256, seed=0))
    queries = torch.from_numpy(_clustered(300, 256, seed=1))
    exact = torch.topk(queries @ x.T, 10, dim=1).indices
    rounded = torch.topk(queries.bfloat16() @ x.bfloat16().T, 10, dim=1).indices
    assert (rounded != exact).any()


def test_compressed_scans_serve_the_same_candidates(make_settings: Callable[..., Settings],
                                                    synthetic) -> None:
    sources = [s for s, _ in synthetic.gold[:60]]
    # float32 rounding of a cosine (1e-7, summed in another order) times the ranking's scale
    tolerance = {"cosine": 1e-5, "csls": 2e-5, "sinkhorn": 1e-3}
    answers = []
    for precision in ("float32", "bfloat16", "int8"):
        with TestClient(create_app(make_settings(search_precision=precision))) as client:
            assert client.get("/model").json()["search_precision"] == precision
            answers.append([[(c["entity"], c["score"]) for r in client.post(
                "/candidates:batch", json={"entities": sources, "k": 10, "metric": metric}
            ).json()["results"] for c in r["candidates"]] for metric in tolerance])
    exact = answers[0]
    for compressed in answers[1:]:
        for metric, want, got in zip(tolerance, exact, compressed, strict=True):
            assert [e for e, _ in got] == [e for e, _ in want]
            assert [s for _, s in got] == pytest.approx([s for _, s in want],
                                                        abs=tolerance[metric])
