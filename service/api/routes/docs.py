"""``/docs`` (Swagger UI) and ``/redoc`` from files the app serves itself.

FastAPI's own pages load their scripts from a CDN, so they are blank where the service cannot
reach the internet. These load the copies the ``fastapi-offline`` package ships, mounted at
``DOCS_ASSETS`` by ``create_app``, and send a Content-Security-Policy that lets them load
nothing from another origin: ReDoc's footer would otherwise fetch a logo from its vendor.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

DOCS_ASSETS = "/docs-assets"
ASSETS_PACKAGE = ("fastapi_offline", "static")
# Swagger UI starts from an inline script; both UIs set inline styles, ReDoc searches in a worker.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'none'")

router = APIRouter(include_in_schema=False)


def _assets(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{DOCS_ASSETS}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


def _secured(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    assets = _assets(request)
    return _secured(get_swagger_ui_html(
        openapi_url=_openapi_url(request), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css", swagger_favicon_url=f"{assets}/favicon.png",
        oauth2_redirect_url=None))  # the API authenticates by key, never by OAuth2


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    assets = _assets(request)
    return _secured(get_redoc_html(
        openapi_url=_openapi_url(request), title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False))
