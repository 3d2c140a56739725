"""``GET /`` (the alignment explorer) and ``GET /report`` (the checkpoint's training report).

Both are pages for a person's browser, open like ``/docs``: a browser following a link sends no
``X-API-Key``, so the explorer asks for the key itself and adds it to each API call it makes.
The explorer's script and style are served from ``/static`` by the app (``create_app``), and
its Content-Security-Policy lets it load nothing from another origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from mimea.model.checkpoint import REPORT_FILE
from mimea.service.errors import ErrorResponse, ServiceError

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
EXPLORER_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                "base-uri 'none'; frame-ancestors 'none'")

router = APIRouter(tags=["pages"])


@router.get("/", include_in_schema=False)
async def explorer() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": EXPLORER_CSP})


@router.get("/report", response_class=FileResponse,
            responses={200: {"content": {"text/html": {}}},
                       404: {"model": ErrorResponse,
                             "description": "The checkpoint has no report.html."}},
            summary="The training report of the served checkpoint (its report.html)")
async def report(request: Request) -> FileResponse:
    """Read from the checkpoint version that was loaded, so it describes the served model
    even after training has switched the checkpoint's path to a newer one."""
    path = request.app.state.aligner.checkpoint_dir / REPORT_FILE
    if not path.is_file():
        raise ServiceError(404, "report_not_found",
                           "the served checkpoint has no training report (report.html)")
    return FileResponse(path, media_type="text/html")
