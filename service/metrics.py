"""Prometheus metrics, one registry per app (tests build many apps in one process).

The middleware is plain ASGI (no ``BaseHTTPMiddleware``: it costs a task per request) and labels
by the matched route's template, so ``/candidates/{entity}`` is one series, not one per entity.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mimea_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("mimea_request_latency_seconds", "HTTP request latency.",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.cache_hits = Counter("mimea_cache_hits", "Answers served from the cache.",
                                  ["kind"], registry=self.registry)
        self.cache_misses = Counter("mimea_cache_misses", "Answers computed (cache miss).",
                                    ["kind"], registry=self.registry)
        self.cache_errors = Counter("mimea_cache_errors",
                                    "Failed Redis calls; the request went on uncached.",
                                    registry=self.registry)
        self.search_seconds = Histogram("mimea_index_search_seconds",
                                        "Time of one batched search/score call in the worker.",
                                        ["kind"], buckets=_LATENCY_BUCKETS,
                                        registry=self.registry)
        self.batch_size = Histogram("mimea_batch_size", "Queries merged into one call.",
                                    ["kind"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
                                    registry=self.registry)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.search_seconds.labels(kind).observe(seconds)
        self.batch_size.labels(kind).observe(size)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Count requests and time them per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
