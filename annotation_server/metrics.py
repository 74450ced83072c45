"""Prometheus metrics for one server instance (its own registry: no process-global state).

Request latency per route template and status, inference latency per model and kind (infer / prompt),
queue depth, volume-cache hits and misses, open interactive sessions, and the process's memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "annotation_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "annotation_inference_seconds",
            "Model time per request",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "annotation_inference_queue_depth", "Inference requests waiting or running", registry=self.registry
        )
        self.cache_hits = Gauge("annotation_volume_cache_hits", "Volume cache hits since start", registry=self.registry)
        self.cache_misses = Gauge(
            "annotation_volume_cache_misses", "Volume cache misses since start", registry=self.registry
        )
        self.cache_bytes = Gauge(
            "annotation_volume_cache_bytes", "Bytes of decoded volumes cached", registry=self.registry
        )
        self.sessions = Gauge("annotation_interactive_sessions", "Open interactive sessions", registry=self.registry)
        self.preannotation_backlog = Gauge(
            "annotation_preannotation_backlog",
            "New PACS series waiting for (or in) automatic pre-annotation, retries included",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, ...

    def bind(self, pending: Callable[[], int], cache: object, sessions: Callable[[], int]) -> None:
        """Gauges read live values at scrape time."""
        self.queue_depth.set_function(pending)
        self.cache_hits.set_function(lambda: float(getattr(cache, "hits", 0)))
        self.cache_misses.set_function(lambda: float(getattr(cache, "misses", 0)))
        self.cache_bytes.set_function(lambda: float(getattr(cache, "nbytes", 0)))
        self.sessions.set_function(sessions)

    def observe_inference(self, model: str, kind: str, seconds: float) -> None:
        self.inference.labels(model=model, kind=kind).observe(seconds)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Pure ASGI middleware timing every HTTP request by route template and status.

    Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request through an extra task
    and memory streams, about a millisecond per request on a small CPU, on every click.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(method=scope["method"], route=template, status=str(status)).observe(
                time.perf_counter() - started
            )


def install_request_metrics(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(RequestMetrics, metrics=metrics)
