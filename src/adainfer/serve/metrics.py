"""What the server counts, in Prometheus's format, in a registry of its own.

Each app gets its own `CollectorRegistry` (not prometheus-client's global one), so that several
servers in one process, as in the tests, count separately and never collide on a metric name.
`RequestMetrics` is the ASGI middleware that times every request, streamed responses to their
last byte.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SAVED_BUCKETS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The server's counters and histograms; `endpoints` are the paths counted by name (others: "other")."""

    def __init__(self, num_layers: int, endpoints: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        self.endpoints = frozenset(endpoints)
        self.requests = Counter("adainfer_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("adainfer_errors", "Requests refused or failed, by kind (the error's `type`).",
                              ["kind"], registry=self.registry)
        self.latency = Histogram("adainfer_request_seconds", "Seconds from request to last response byte.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("adainfer_batch_size", "Classification rows per batched model pass.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.exit_layer = Histogram("adainfer_exit_layer", "Decoder layers computed per classified input.",
                                    buckets=tuple(range(1, num_layers + 1)), registry=self.registry)
        self.layers_saved = Histogram("adainfer_layers_saved", "Fraction of layers skipped per classified input.",
                                      buckets=SAVED_BUCKETS, registry=self.registry)
        self.generated_tokens = Counter("adainfer_generated_tokens", "Tokens generated for /v1/completions.",
                                        registry=self.registry)
        self.queued_rows = Gauge("adainfer_queued_rows", "Rows waiting in the batcher's queue (a generation is one).",
                                 registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def endpoint(self, path: str) -> str:
        """The label for a path: known routes by name, anything else as one label (bounded cardinality)."""
        return path if path in self.endpoints else "other"


class RequestMetrics:
    """ASGI middleware: count each HTTP request by endpoint and status, and time it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            endpoint = self.metrics.endpoint(scope["path"])
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
