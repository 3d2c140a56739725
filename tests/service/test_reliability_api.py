"""Property-based: generated requests to every operation of the OpenAPI schema, in process.

schemathesis draws valid and invalid inputs for each operation from the app's own schema and
sends them through the ASGI transport (no network). Whatever it sends, the service must answer
without a 5xx, every error must be the JSON envelope, and every response must match the schema.
Derandomized (a fixed seed per test), with no example database, so CI sees the same cases on
every run.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from mimea.service.main import create_app
from mimea.service.settings import Settings

pytestmark = pytest.mark.slow  # some thirty generated requests per operation

MAX_EXAMPLES = 30


def known_ids(operation: Any, ids: list[str]) -> st.SearchStrategy[Any]:
    """Cases of ``operation`` whose identifiers exist (a generated one almost never does), so
    that answers, not only 404s, are checked against the schema."""
    entity, k = st.sampled_from(ids), st.integers(1, 1000)
    pair = st.fixed_dictionaries({"source": entity, "target": entity})
    bodies: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "/candidates:batch": st.fixed_dictionaries(
            {"entities": st.lists(entity, min_size=1, max_size=40), "k": k,
             "metric": st.sampled_from(["cosine", "csls", "sinkhorn"])}),
        "/align": pair,
        "/align:batch": st.fixed_dictionaries({"pairs": st.lists(pair, min_size=1,
                                                                 max_size=20)}),
    }
    if operation.path == "/candidates/{entity}":
        return entity.flatmap(lambda e: operation.as_strategy(path_parameters={"entity": e}))
    if operation.path == "/entities":
        prefix = entity.flatmap(lambda e: st.integers(0, len(e)).map(lambda n: e[:n]))
        return prefix.flatmap(lambda p: operation.as_strategy(query={"prefix": p}))
    return bodies[operation.path].flatmap(lambda body: operation.as_strategy(body=body))


KNOWN_ID_PATHS = ("/candidates/{entity}", "/candidates:batch", "/align", "/align:batch",
                  "/entities")


def cases() -> list[tuple[str, str, str]]:
    """(method, path, inputs) for every operation, from the schema of an app not yet started:
    valid inputs, invalid ones where the operation takes any, and known identifiers where it
    takes some."""
    spec = create_app(Settings(checkpoint=None, redis_url=None, api_key=None)).openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append((method.upper(), path, "positive"))
            if op.get("parameters") or op.get("requestBody"):
                out.append((method.upper(), path, "negative"))
            if path in KNOWN_ID_PATHS:
                out.append((method.upper(), path, "known"))
    return out


@pytest.fixture(scope="module")
def api_schema(synthetic) -> Any:
    app = create_app(Settings(checkpoint=synthetic.path, redis_url=None, api_key=None,
                              index="flat", device="cpu", threads=1))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is ``{"error": {"code", "message", "details"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    return None


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    return None


CHECKS = [no_server_error, error_envelope, response_schema_conformance,
          content_type_conformance]


@pytest.mark.parametrize("method,path,inputs", cases())
def test_every_operation_answers_within_its_schema(api_schema: Any, synthetic, method: str,
                                                   path: str, inputs: str) -> None:
    operation = api_schema[path][method]
    strategy = (known_ids(operation, synthetic.uris) if inputs == "known"
                else operation.as_strategy(generation_mode=GenerationMode(inputs)))

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def answers(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    answers()
