"""Prometheus metrics of the API (a registry per app) and the middleware that times requests.

``telemetry_api_request_seconds{method, route, status}``: ``route`` is the route's template
(``/v1/chargers/{charger_id}/latest``), never the raw path, so ids do not become label values;
requests that match no route are counted under ``unmatched``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.pagecache import PageCache

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "telemetry_api_request_seconds",
            "Time to answer a request, by route template and status",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.receive_timeouts = Counter(
            "telemetry_api_receive_timeouts",
            "Connections closed because a request's headers or body did not arrive in time "
            "(HEADER_TIMEOUT_S, BODY_TIMEOUT_S), by phase (header, body)",
            ["phase"],
            registry=self.registry,
        )
        self.ingested = Counter(
            "telemetry_api_ingested_readings",
            "Readings accepted over HTTP and published (PUBACK received)",
            registry=self.registry,
        )
        self.enrollments = Counter(
            "telemetry_api_enrollments",
            "Enrollment requests, by kind (token, renew) and outcome (signed, bad_csr, "
            "bad_token, refused, unavailable)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.mirror_chargers = Gauge(
            "telemetry_api_mirror_chargers",
            "Chargers held in the live mirror",
            registry=self.registry,
        )
        self.sweeps = Counter(
            "telemetry_api_mirror_sweeps",
            "Bulk confirmations of the live mirror against InfluxDB, by outcome (ok, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.sweep_seconds = Gauge(
            "telemetry_api_mirror_sweep_seconds",
            "Duration of the last successful mirror sweep",
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "telemetry_api_broker_connected",
            "1 while the API's MQTT session is up",
            registry=self.registry,
        )

        self.alarms_active = Gauge(
            "telemetry_api_alarms_active",
            "Active alarms, by kind (docs/alarms.md)",
            ["kind"],
            registry=self.registry,
        )
        self.alarms_raised = Counter(
            "telemetry_api_alarms_raised",
            "Alarms raised by this process, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.alarm_rounds = Counter(
            "telemetry_api_alarm_evaluations",
            "Rounds of alarm evaluation completed by this process",
            registry=self.registry,
        )
        self.alarms_cleared = Counter(
            "telemetry_api_alarms_cleared",
            "Alarms cleared by this process, by kind",
            ["kind"],
            registry=self.registry,
        )

    def watch_history_cache(self, cache: PageCache) -> None:
        """Gauges read from ``cache`` at scrape time (hits and misses count since the start)."""
        readers: dict[str, tuple[str, Callable[[], int]]] = {
            "pages": ("Downsampled history pages cached", lambda: len(cache)),
            "bytes": ("Bytes of cached history pages", lambda: cache.size_bytes),
            "hits": ("History requests answered from the cache, since start", lambda: cache.hits),
            "misses": ("History requests that queried InfluxDB, since start", lambda: cache.misses),
        }
        for name, (doc, read) in readers.items():
            gauge = Gauge(f"telemetry_api_history_cache_{name}", doc, registry=self.registry)
            gauge.set_function(functools.partial(_as_float, read))


def _as_float(read: Callable[[], int]) -> float:
    return float(read())


class TimingMiddleware:
    """Pure ASGI middleware (no per-request task or body copy): observes each HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
