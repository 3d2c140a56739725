"""The pages for a browser: the explorer at ``/``, offline ``/docs`` and ``/redoc``, ``/report``."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mimea.service.main import create_app
from mimea.service.settings import Settings
from tests.service.conftest import build_checkpoint

ABSOLUTE_URL = re.compile(r"(?:https?:)?//[^\s\"'<>]+", re.IGNORECASE)


class _References(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.urls


def assert_offline(client: TestClient, path: str) -> list[str]:
    """The page names no other host and each file it loads is served; returns those files."""
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert ABSOLUTE_URL.findall(response.text) == []
    assets = [url for url in references(response.text) if not url.startswith(("data:", "#"))]
    for url in assets:
        if url in ("docs", "redoc", "report"):  # the explorer's links to the other pages
            continue
        asset = client.get(url if url.startswith("/") else f"/{url}")
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    return assets


@pytest.fixture(scope="module")
def keyed(synthetic) -> TestClient:
    settings = Settings(checkpoint=synthetic.path, redis_url=None, api_key="s3cret",
                        index="flat", device="cpu", threads=1)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_nothing_from_another_host(keyed: TestClient, path: str) -> None:
    assets = assert_offline(keyed, path)
    assert any(url.endswith(".js") for url in assets)


def test_explorer_is_served_without_the_api_key(keyed: TestClient) -> None:
    assets = assert_offline(keyed, "/")
    assert {"static/explorer.js", "static/explorer.css"} <= set(assets)
    assert {"docs", "report"} <= set(assets)
    policy = keyed.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert keyed.get("/static/explorer.js").headers["content-type"].startswith(
        "text/javascript")
    assert keyed.get("/model").status_code == 401  # the API behind it still needs the key


def test_openapi_documents_report_but_not_the_pages(keyed: TestClient) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]
    assert "/report" in paths
    assert not {"/", "/docs", "/redoc"} & set(paths)


def test_report_without_report_html_is_404_envelope(keyed: TestClient) -> None:
    response = keyed.get("/report")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "report_not_found"


def test_report_serves_the_loaded_checkpoints_report_html(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    checkpoint = build_checkpoint(tmp_path / "ckpt")
    (checkpoint.path.resolve() / "report.html").write_text("<h1>training report</h1>")
    with TestClient(create_app(make_settings(checkpoint=checkpoint.path))) as client:
        response = client.get("/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<h1>training report</h1>"
