"""The decided alignment over HTTP: ``GET /alignment/{entity}``, ``POST /alignment:batch``, the
streamed ``GET /alignment``, and the calibrated ``match_probability`` of ``POST /align``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mimea.model.checkpoint import load_checkpoint
from mimea.model.decisions import alignment_lines, stored_decisions
from mimea.service.schemas import AlignmentBatchResponse, AlignmentDecision, AlignResponse
from tests.service.conftest import SyntheticCheckpoint, serving


@pytest.fixture(scope="module")
def decided_client(decided: SyntheticCheckpoint) -> Iterator[TestClient]:
    with serving(decided.path) as client:
        yield client


@pytest.fixture(scope="module")
def stored(decided: SyntheticCheckpoint):
    checkpoint = load_checkpoint(decided.path)
    return checkpoint, stored_decisions(checkpoint)


def _rows(stored, kind: str) -> list[int]:
    decisions = stored[1]
    tables = decisions.tables
    paired = (tables.counterpart >= 0) & ~tables.seed
    picked = {"seed": tables.seed,
              "match": paired & (tables.probability >= decisions.threshold),
              "below": paired & (tables.probability < decisions.threshold),
              "unpaired": tables.counterpart < 0}[kind]
    return np.flatnonzero(picked.numpy()).tolist()


def test_each_decision_is_the_stored_one(decided_client: TestClient, stored) -> None:
    checkpoint, decisions = stored
    uris, tables = checkpoint.entities.uris, decisions.tables
    for kind, expected in (("seed", "seed"), ("match", "match"), ("below", "no_match"),
                           ("unpaired", "no_match")):
        rows = _rows(stored, kind)
        assert rows, f"the fixture has no {kind} entity"
        for row in rows[:5]:
            response = decided_client.get(f"/alignment/{uris[row]}")
            assert response.status_code == 200, response.text
            body = AlignmentDecision.model_validate(response.json())
            assert body.decision == expected
            assert body.threshold == pytest.approx(decisions.threshold)
            partner = int(tables.counterpart[row])
            if expected == "no_match":
                assert body.counterpart is None
                assert body.probability == (None if partner < 0 else
                                            pytest.approx(float(tables.probability[row])))
            else:
                assert body.counterpart == uris[partner]
                assert body.compared_with == uris[partner]
                assert body.probability == pytest.approx(float(tables.probability[row]))
            assert set(body.modality_similarity) == set(checkpoint.modalities)


def test_min_probability_moves_the_threshold(decided_client: TestClient, stored) -> None:
    uris = stored[0].entities.uris
    row = _rows(stored, "below")[0]
    assert decided_client.get(f"/alignment/{uris[row]}").json()["decision"] == "no_match"
    lowered = decided_client.get(f"/alignment/{uris[row]}", params={"min_probability": 0})
    assert lowered.json()["decision"] == "match" and lowered.json()["threshold"] == 0
    seed = _rows(stored, "seed")[0]
    strict = decided_client.get(f"/alignment/{uris[seed]}", params={"min_probability": 1})
    assert strict.json()["decision"] == "seed"
    bad = decided_client.get(f"/alignment/{uris[row]}", params={"min_probability": 1.5})
    assert bad.status_code == 422


def test_unknown_entity_is_a_404_with_suggestions(decided_client: TestClient,
                                                 decided: SyntheticCheckpoint) -> None:
    response = decided_client.get("/alignment/" + decided.uris[0] + "x")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "entity_not_found" and decided.uris[0] in error["details"][
        "suggestions"]


def test_batch_answers_each_item(decided_client: TestClient, stored) -> None:
    uris = stored[0].entities.uris
    rows = _rows(stored, "match")[:3]
    entities = [uris[rows[0]], "no-such-entity", uris[rows[1]], uris[rows[2]]]
    response = decided_client.post("/alignment:batch", json={"entities": entities})
    assert response.status_code == 200, response.text
    results = AlignmentBatchResponse.model_validate(response.json()).results
    assert results[1].error.code == "entity_not_found"  # type: ignore[union-attr]
    for i in (0, 2, 3):
        assert results[i] == AlignmentDecision.model_validate(
            decided_client.get(f"/alignment/{entities[i]}").json())
    assert decided_client.post("/alignment:batch", json={"entities": []}).status_code == 422


def test_the_stream_is_the_alignment_file(decided_client: TestClient, stored) -> None:
    checkpoint, decisions = stored
    expected = "".join(alignment_lines(decisions.tables, checkpoint.entities,
                                       decisions.threshold, "jsonl"))
    response = decided_client.get("/alignment")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.text == expected
    records = [json.loads(line) for line in expected.splitlines()]
    matches = decided_client.get("/alignment", params={"decision": "match",
                                                       "min_probability": 0.5})
    lowered = "".join(alignment_lines(decisions.tables, checkpoint.entities, 0.5, "jsonl"))
    assert matches.text.splitlines() == [
        line for line in lowered.splitlines() if json.loads(line)["decision"] == "match"]
    both = decided_client.get("/alignment", params=[("decision", "seed"),
                                                    ("decision", "no_match"), ("kg", "2")])
    picked = [json.loads(line) for line in both.text.splitlines()]
    assert picked == [r for r in records if r["decision"] in ("seed", "no_match")
                      and r["kg"] == 2]
    assert decided_client.get("/alignment", params={"decision": "maybe"}).status_code == 422


def test_align_reports_the_calibrated_probability(decided_client: TestClient, stored) -> None:
    checkpoint, decisions = stored
    uris, tables = checkpoint.entities.uris, decisions.tables
    row = _rows(stored, "match")[0]
    partner = int(tables.counterpart[row])
    body = AlignResponse.model_validate(decided_client.post(
        "/align", json={"source": uris[row], "target": uris[partner]}).json())
    assert body.match_probability == pytest.approx(float(tables.probability[row]))
    kgs = np.asarray(checkpoint.entities.kgs)
    others = [t for t in np.flatnonzero(kgs != kgs[row]).tolist() if t != partner][:20]
    pairs = [{"source": uris[row], "target": uris[t]} for t in others]
    results = decided_client.post("/align:batch", json={"pairs": pairs}).json()["results"]
    left = 1.0 - float(tables.probability[row])
    for result in results:
        assert 0.0 <= result["match_probability"] <= left + 1e-6
    seed = _rows(stored, "seed")[0]
    stranger = next(t for t in np.flatnonzero(kgs != kgs[seed]).tolist()
                    if t != int(tables.counterpart[seed]))
    other = decided_client.post("/align", json={"source": uris[seed],
                                                "target": uris[stranger]}).json()
    assert other["match_probability"] == 0.0


def test_unpaired_entities_get_a_calibrated_probability(decided_client: TestClient,
                                                        stored) -> None:
    """Neither entity paired: the calibration alone answers, a probability in (0, 1)."""
    checkpoint, _ = stored
    kgs = np.asarray(checkpoint.entities.kgs)
    unpaired = _rows(stored, "unpaired")
    source = next(r for r in unpaired if kgs[r] == 2)
    target = next((r for r in unpaired if kgs[r] == 1), None)
    if target is None:
        pytest.skip("every KG1 entity of the fixture is paired")
    uris = checkpoint.entities.uris
    body = decided_client.post("/align", json={"source": uris[source],
                                               "target": uris[target]}).json()
    assert 0.0 < body["match_probability"] < 1.0


def test_model_reports_the_threshold(decided_client: TestClient, stored) -> None:
    info = decided_client.get("/model").json()
    assert info["decision_threshold"] == pytest.approx(stored[1].threshold)
    assert info["decision_precision"] == pytest.approx(0.95)


def test_a_checkpoint_without_decisions(client: TestClient, synthetic) -> None:
    source, target = synthetic.gold[0]
    for response in (client.get(f"/alignment/{source}"), client.get("/alignment"),
                     client.post("/alignment:batch", json={"entities": [source]})):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "no_decisions"
        assert "mimea align" in response.json()["error"]["message"]
    assert client.post("/align", json={"source": source, "target": target}).json()[
        "match_probability"] is None
    assert client.get("/model").json()["decision_threshold"] is None


def test_decisions_are_cached(decided_client: TestClient, stored) -> None:
    uris = stored[0].entities.uris
    row = _rows(stored, "match")[1]

    def hits() -> float:
        text = decided_client.get("/metrics").text
        line = next((ln for ln in text.splitlines()
                     if ln.startswith('mimea_cache_hits_total{kind="alignment"}')), None)
        return 0.0 if line is None else float(line.split()[-1])

    before = hits()
    first = decided_client.get(f"/alignment/{uris[row]}", params={"min_probability": 0.25})
    second = decided_client.get(f"/alignment/{uris[row]}", params={"min_probability": 0.25})
    assert first.json() == second.json()
    assert hits() == before + 1
