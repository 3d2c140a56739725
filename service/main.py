"""Builds the FastAPI application; the heavy objects are made in ``lifespan``.

``create_app`` only wires routers, middleware and error handlers. ``lifespan`` loads the
checkpoint (or takes one the CLI already loaded), builds the indexes and the cache, keeps them on
``app.state`` and closes them in ``finally``. Any loading error propagates, so the server never
starts half-loaded. For ``uvicorn --factory mimea.service.main:create_app`` the settings come
from the ``MIMEA_*`` environment.

``/docs`` and ``/redoc`` load their scripts and styles from the app itself (``api/routes/docs``),
so they work where no CDN can be reached; ``/`` is the alignment explorer, whose files are in
``service/static``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mimea.service.aligner import Aligner
from mimea.service.api.routes import (
    align,
    alignment,
    candidates,
    docs,
    entities,
    health,
    model,
    pages,
)
from mimea.service.cache import build_cache
from mimea.service.errors import install_error_handlers
from mimea.service.limits import BodyLimitMiddleware
from mimea.service.metrics import Metrics, MetricsMiddleware
from mimea.service.serving import AlignmentService
from mimea.service.settings import Settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load everything once; release it all on shutdown or on a failed start."""
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        aligner: Aligner | None = app.state.preloaded
        app.state.preloaded = None
        if aligner is None:
            aligner = await anyio.to_thread.run_sync(Aligner.load, settings)
        # The aligner's ~10^5 long-lived objects (URIs, lookups) would otherwise be rescanned by
        # every full collection while serving, a latency spike on the event loop.
        gc.collect()
        gc.freeze()
        stack.callback(aligner.close)
        cache = build_cache(settings.redis_url, ttl_s=settings.cache_ttl_s,
                            max_entries=settings.cache_size, timeout_s=settings.redis_timeout_s,
                            retry_s=settings.redis_retry_s,
                            on_error=app.state.metrics.cache_errors.inc)
        stack.push_async_callback(cache.aclose)
        status = await cache.check()
        logger.info("cache: %s (%s)", cache.backend, status)
        service = AlignmentService(aligner, cache, app.state.metrics, settings)
        stack.push_async_callback(service.aclose)
        app.state.aligner = aligner
        app.state.cache = cache
        app.state.service = service
        try:
            yield
        finally:
            app.state.service = None
            gc.unfreeze()
            logger.info("shutting down")


def create_app(settings: Settings | None = None, *, aligner: Aligner | None = None) -> FastAPI:
    """The service's app; ``aligner`` lets a caller that already loaded the checkpoint reuse it."""
    settings = settings or Settings()
    app = FastAPI(
        title="MIMEA alignment service",
        summary="Entity alignment candidates and pair scores from a MIMEA checkpoint.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by docs.router from local files
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.preloaded = aligner
    app.state.metrics = Metrics()
    app.state.service = None
    install_error_handlers(app)
    for router in (candidates.router, align.router, alignment.router, entities.router,
                   model.router, health.router, pages.router, docs.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.mount(docs.DOCS_ASSETS, StaticFiles(packages=[docs.ASSETS_PACKAGE]), name="docs-assets")
    # Inside the metrics middleware (added after it), so its 413s are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
