"""Every route and every client error, through FastAPI's test client."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from mimea.service.main import create_app
from mimea.service.schemas import (
    AlignBatchResponse,
    AlignResponse,
    CandidatesBatchResponse,
    CandidatesResponse,
    EntitiesResponse,
    ModelInfo,
    ReadyResponse,
)
from mimea.service.settings import Settings

KG1_MID = "/m/0abc000"
KG1_URI = "http://example.org/resource/A_(b)1"
KG2_URI = "http://dbpedia.org/resource/Entity_1"
KG2_MID = "/m/0xyz/0"


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("entity", [KG1_MID, KG1_URI, KG2_MID, KG2_URI])
def test_candidates_accepts_identifiers_with_slashes(client: TestClient, entity: str) -> None:
    response = client.get(f"/candidates/{entity}", params={"k": 5})
    assert response.status_code == 200, response.text
    body = CandidatesResponse.model_validate(response.json())
    assert body.entity == entity
    assert body.target_kg == 3 - body.kg
    assert [c.rank for c in body.candidates] == [1, 2, 3, 4, 5]
    assert all(c.kg == body.target_kg for c in body.candidates)
    scores = [c.score for c in body.candidates]
    assert scores == sorted(scores, reverse=True)


def test_candidates_reports_modality_similarity_null_when_missing(client: TestClient) -> None:
    body = client.get(f"/candidates/{KG1_URI}", params={"k": 50}).json()
    values = [v for c in body["candidates"] for v in c["modality_similarity"].values()]
    assert None in values and any(isinstance(v, float) for v in values)
    for cand in body["candidates"]:
        assert set(cand["modality_similarity"]) == {"structure", "relation", "attribute",
                                                    "visual"}


@pytest.mark.parametrize("metric,field", [("cosine", "cosine"), ("csls", "csls")])
def test_candidates_score_is_the_metric(client: TestClient, metric: str, field: str) -> None:
    body = client.get(f"/candidates/{KG1_URI}", params={"k": 10, "metric": metric}).json()
    assert body["metric"] == metric
    assert [c["score"] for c in body["candidates"]] == [c[field] for c in body["candidates"]]


def test_sinkhorn_score_is_the_log_probability(client: TestClient) -> None:
    body = client.get(f"/candidates/{KG1_URI}", params={"k": 10}).json()
    assert body["metric"] == "sinkhorn"
    for c in body["candidates"]:
        assert 0.0 <= c["probability"] <= 1.0
        assert c["probability"] == pytest.approx(math.exp(min(c["score"], 0.0)), rel=1e-9)


@pytest.mark.parametrize("csls,metric", [("true", "csls"), ("false", "cosine")])
def test_deprecated_csls_flag_is_an_alias(client: TestClient, csls: str, metric: str) -> None:
    flagged = client.get(f"/candidates/{KG1_URI}", params={"k": 4, "csls": csls})
    assert flagged.json() == client.get(f"/candidates/{KG1_URI}",
                                        params={"k": 4, "metric": metric}).json()
    batch = client.post("/candidates:batch",
                        json={"entities": [KG1_URI], "k": 4, "csls": csls == "true"})
    assert batch.json()["results"] == [flagged.json()]
    assert client.get(f"/candidates/{KG1_URI}",
                      params={"csls": csls, "metric": metric}).status_code == 200


def test_csls_flag_against_metric_is_422(client: TestClient) -> None:
    error = assert_envelope(client.get(f"/candidates/{KG1_URI}",
                                       params={"csls": "true", "metric": "sinkhorn"}),
                            422, "conflicting_metric")
    assert "send metric alone" in error["message"]


def test_unknown_metric_is_422(client: TestClient) -> None:
    assert_envelope(client.get(f"/candidates/{KG1_URI}", params={"metric": "euclid"}), 422,
                    "validation_error")


def test_sinkhorn_without_plan_terms_is_422_saying_why(legacy) -> None:
    settings = Settings(checkpoint=legacy.path, redis_url=None, api_key=None, index="flat",
                        device="cpu", threads=1)
    with TestClient(create_app(settings)) as old:
        info = old.get("/model").json()
        assert info["default_metric"] == "csls" and info["available_metrics"] == [
            "cosine", "csls"] and info["sinkhorn_reg"] is None
        for response in (old.get(f"/candidates/{KG1_URI}", params={"metric": "sinkhorn"}),
                         old.post("/candidates:batch",
                                  json={"entities": [KG1_URI], "metric": "sinkhorn"})):
            error = assert_envelope(response, 422, "metric_unavailable")
            assert "csls_r and sinkhorn_potential" in error["message"]
            assert error["details"] == {"metric": "sinkhorn", "available": ["cosine", "csls"]}
        assert old.get(f"/candidates/{KG1_URI}").json()["metric"] == "csls"


def test_candidates_k_larger_than_kg_returns_whole_kg(client: TestClient) -> None:
    body = client.get(f"/candidates/{KG2_URI}", params={"k": 1000}).json()
    assert len(body["candidates"]) == 300  # KG1 size


@pytest.mark.parametrize("k", ["0", "1001", "-3", "ten", "1.5"])
def test_candidates_k_out_of_range_is_422(client: TestClient, k: str) -> None:
    error = assert_envelope(client.get(f"/candidates/{KG1_MID}", params={"k": k}), 422,
                            "validation_error")
    assert "k" in error["message"]


def test_unknown_entity_is_404_naming_it_with_suggestions(client: TestClient) -> None:
    error = assert_envelope(client.get("/candidates/http://example.org/resource/A_(b)1x"), 404,
                            "entity_not_found")
    assert "http://example.org/resource/A_(b)1x" in error["message"]
    assert KG1_URI in error["details"]["suggestions"]


@pytest.mark.parametrize("path", [
    "/candidates/%2F", "/candidates/", "/candidates/%00", "/candidates/" + "x" * 5000,
    "/candidates/%E2%82%AC%F0%9F%98%80", "/candidates/..%2F..%2Fetc%2Fpasswd",
    "/candidates/%FF%FE", "/candidates/a%20b?k=3", "/candidates//m//0abc000",
])
def test_weird_identifiers_are_404_never_500(client: TestClient, path: str) -> None:
    assert_envelope(client.get(path), 404, "entity_not_found")


def test_align_scores_pair_in_either_order(client: TestClient) -> None:
    forward = client.post("/align", json={"source": KG1_MID, "target": KG2_URI})
    backward = client.post("/align", json={"source": KG2_URI, "target": KG1_MID})
    assert forward.status_code == backward.status_code == 200
    f = AlignResponse.model_validate(forward.json())
    b = AlignResponse.model_validate(backward.json())
    assert f.source.kg == 1 and b.source.kg == 2
    assert f.cosine == pytest.approx(b.cosine, abs=1e-5)
    assert f.csls == pytest.approx(b.csls, abs=1e-5)
    assert f.target_rank == b.source_rank and f.source_rank == b.target_rank
    assert f.sinkhorn is not None and b.sinkhorn is not None
    # one plan entry, as a share of the KG1 row's mass (300) and of the KG2 column's (320)
    assert f.sinkhorn - b.sinkhorn == pytest.approx(math.log(300 / 320), abs=1e-4)
    assert f.probability is not None and 0.0 <= f.probability <= 1.0


def test_align_breakdown_lists_weights_and_missing(client: TestClient) -> None:
    body = client.post("/align", json={"source": KG1_URI, "target": KG2_MID}).json()
    mods = body["modalities"]
    assert set(mods["source_weights"]) == set(mods["similarity"])
    for m in mods["source_missing"]:
        assert mods["similarity"][m] is None and mods["source_weights"][m] == 0.0
    for m in mods["target_missing"]:
        assert mods["similarity"][m] is None and mods["target_weights"][m] == 0.0
    assert sum(mods["source_weights"].values()) == pytest.approx(1.0, abs=1e-5)


def test_align_same_kg_is_422(client: TestClient) -> None:
    error = assert_envelope(client.post("/align", json={"source": KG1_MID, "target": KG1_URI}),
                            422, "same_kg")
    assert KG1_MID in error["message"]


def test_align_unknown_target_is_404(client: TestClient) -> None:
    error = assert_envelope(client.post("/align", json={"source": KG1_MID, "target": "nope"}),
                            404, "entity_not_found")
    assert "'nope'" in error["message"]


@pytest.mark.parametrize("body", [
    b"not json", b"{}", b'{"source": "/m/0abc000"}', b'{"source": 1, "target": 2}',
    b'{"source": "", "target": "/m/0abc000"}', b"[]", b'{"source": "a", "target": "b", "x": 1}',
    b'{"source": "' + b"a" * 5000 + b'", "target": "b"}',
])
def test_align_malformed_body_is_422(client: TestClient, body: bytes) -> None:
    response = client.post("/align", content=body, headers={"Content-Type": "application/json"})
    assert_envelope(response, 422, "validation_error")


def test_candidates_batch_equals_single_route(client: TestClient) -> None:
    entities = [KG1_MID, KG2_URI, KG1_URI, KG2_MID]
    for metric in ("cosine", "csls", "sinkhorn"):
        response = client.post("/candidates:batch",
                               json={"entities": entities, "k": 7, "metric": metric})
        assert response.status_code == 200, response.text
        batch = CandidatesBatchResponse.model_validate(response.json()).results
        singles = [client.get(f"/candidates/{e}", params={"k": 7, "metric": metric}).json()
                   for e in entities]
        assert [r.model_dump() for r in batch] == singles


def test_align_batch_equals_single_route(client: TestClient) -> None:
    pairs = [{"source": KG1_MID, "target": KG2_MID}, {"source": KG2_URI, "target": KG1_URI}]
    response = client.post("/align:batch", json={"pairs": pairs})
    assert response.status_code == 200, response.text
    batch = AlignBatchResponse.model_validate(response.json()).results
    singles = [client.post("/align", json=p).json() for p in pairs]
    assert [r.model_dump() for r in batch] == singles


@pytest.mark.parametrize("body,status,code", [
    ({"entities": []}, 422, "validation_error"),
    ({"entities": [KG1_MID], "k": 0}, 422, "validation_error"),
    ({"entities": [KG1_MID] * 1025}, 422, "validation_error"),
    ({"entities": [KG1_MID] * 21, "k": 1000}, 422, "too_many_candidates"),
])
def test_candidates_batch_errors(client: TestClient, body: dict, status: int, code: str) -> None:
    assert_envelope(client.post("/candidates:batch", json=body), status, code)


def assert_item_error(item: dict, code: str) -> dict:
    assert set(item) == {"error"} and set(item["error"]) == {"code", "message", "details"}
    assert item["error"]["code"] == code and item["error"]["message"]
    return item["error"]


def test_candidates_batch_answers_an_unknown_entity_in_its_place(client: TestClient) -> None:
    entities = [KG1_MID, "missing/entity", KG2_URI]
    response = client.post("/candidates:batch", json={"entities": entities, "k": 3})
    assert response.status_code == 200, response.text
    results = CandidatesBatchResponse.model_validate(response.json()).model_dump()["results"]
    error = assert_item_error(results[1], "entity_not_found")
    single = client.get("/candidates/missing/entity", params={"k": 3}).json()["error"]
    assert error == single and error["details"]["entity"] == "missing/entity"
    assert [results[0], results[2]] == [
        client.get(f"/candidates/{e}", params={"k": 3}).json() for e in (KG1_MID, KG2_URI)]


def test_candidates_batch_of_unknown_entities_only_is_200(client: TestClient) -> None:
    body = client.post("/candidates:batch", json={"entities": ["nope", "nope"]}).json()
    assert [assert_item_error(item, "entity_not_found")["details"]["entity"]
            for item in body["results"]] == ["nope", "nope"]


def test_align_batch_same_kg_names_the_pair(client: TestClient) -> None:
    pairs = [{"source": KG1_MID, "target": KG2_MID}, {"source": KG2_MID, "target": KG2_URI}]
    response = client.post("/align:batch", json={"pairs": pairs})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert "pairs[1]" in assert_item_error(results[1], "same_kg")["message"]
    assert results[0] == client.post("/align", json=pairs[0]).json()


def test_align_batch_answers_an_unknown_entity_in_its_place(client: TestClient) -> None:
    pairs = [{"source": KG1_MID, "target": "nope"}, {"source": KG2_URI, "target": KG1_URI},
             {"source": "nope", "target": KG2_MID}]
    response = client.post("/align:batch", json={"pairs": pairs})
    assert response.status_code == 200, response.text
    results = AlignBatchResponse.model_validate(response.json()).model_dump()["results"]
    assert assert_item_error(results[0], "entity_not_found")["details"]["entity"] == "nope"
    assert assert_item_error(results[2], "entity_not_found")["details"]["entity"] == "nope"
    assert results[1] == client.post("/align", json=pairs[1]).json()


def test_entities_prefix_lookup(client: TestClient) -> None:
    body = EntitiesResponse.model_validate(
        client.get("/entities", params={"kg": 1, "prefix": "/m/0abc00", "limit": 2}).json())
    assert [e.entity for e in body.entities] == ["/m/0abc000", "/m/0abc003"]
    assert body.has_more
    everything = client.get("/entities", params={"prefix": "/m/0xyz/", "limit": 1000}).json()
    assert len(everything["entities"]) == 160 and not everything["has_more"]
    assert all(e["kg"] == 2 for e in everything["entities"])


@pytest.mark.parametrize("params", [{"kg": 3}, {"limit": 0}, {"limit": 1001}, {"kg": "x"}])
def test_entities_bad_parameters_are_422(client: TestClient, params: dict) -> None:
    assert_envelope(client.get("/entities", params=params), 422, "validation_error")


def test_entities_unknown_prefix_is_empty(client: TestClient) -> None:
    assert client.get("/entities", params={"prefix": "\U0001f600"}).json() == {
        "entities": [], "has_more": False}


def test_model_info(client: TestClient) -> None:
    info = ModelInfo.model_validate(client.get("/model").json())
    assert info.entities == {"kg1": 300, "kg2": 320}
    assert info.modalities == ["structure", "relation", "attribute", "visual"]
    assert info.embedding_dims["joint"] == 88 and info.metrics["test"]["hits@1"] == 0.9
    assert info.default_metric == "sinkhorn" and info.sinkhorn_reg == 0.02
    assert info.available_metrics == ["cosine", "csls", "sinkhorn"]


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = ReadyResponse.model_validate(client.get("/ready").json())
    assert ready.cache.backend == "memory" and ready.cache.status == "ok"


def test_metrics_exposes_route_counters(client: TestClient) -> None:
    client.get(f"/candidates/{KG1_MID}")
    client.get(f"/candidates/{KG1_MID}")
    text = client.get("/metrics").text
    assert 'mimea_requests_total{method="GET",route="/candidates/{entity:path}",status="200"}' \
        in text
    assert "mimea_request_latency_seconds_bucket" in text
    assert 'mimea_cache_hits_total{kind="candidates"}' in text
    assert 'mimea_cache_misses_total{kind="candidates"}' in text
    assert 'mimea_index_search_seconds_count{kind="candidates"}' in text


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    assert_envelope(client.get("/nowhere"), 404, "not_found")
    assert_envelope(client.delete("/align"), 405, "method_not_allowed")


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/candidates/{entity}", "/candidates:batch", "/align", "/align:batch",
                 "/entities", "/model", "/health", "/ready", "/metrics"):
        assert path in paths, path


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_api_key_missing_or_wrong_is_401(make_settings: Callable[..., Settings],
                                         headers: dict) -> None:
    with TestClient(create_app(make_settings(api_key="s3cret"))) as keyed:
        for method, path, body in (("GET", f"/candidates/{KG1_MID}", None),
                                   ("POST", "/align", {"source": KG1_MID, "target": KG2_MID}),
                                   ("GET", "/entities", None), ("GET", "/model", None)):
            response = keyed.request(method, path, json=body, headers=headers)
            assert_envelope(response, 401, "unauthorized")
        assert keyed.get("/health").status_code == 200


def test_api_key_correct_is_accepted(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(api_key="s3cret"))) as keyed:
        response = keyed.get(f"/candidates/{KG1_MID}", headers={"X-API-Key": "s3cret"})
        assert response.status_code == 200
