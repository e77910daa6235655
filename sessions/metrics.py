"""The sessions job's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SessionMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "telemetry_sessions_passes", "Passes of the job, by outcome", ["outcome"], registry=r
        )
        self.written = Counter(
            "telemetry_sessions_written",
            "Session points written, by state (active, ended, superseded)",
            ["state"],
            registry=r,
        )
        self.computed = Counter(
            "telemetry_sessions_computed", "Sessions recomputed from their readings", registry=r
        )
        self.deferred = Gauge(
            "telemetry_sessions_deferred",
            "Sessions left for the next pass (MAX_SESSIONS_PER_PASS reached)",
            registry=r,
        )
        self.run_seconds = Histogram(
            "telemetry_sessions_run_seconds",
            "Wall time of one pass",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.lag_seconds = Gauge(
            "telemetry_sessions_lag_seconds",
            "Now minus the time the readings are scanned until",
            registry=r,
        )
        self.last_success = Gauge(
            "telemetry_sessions_last_success_timestamp_seconds",
            "Unix time the last pass succeeded",
            registry=r,
        )
