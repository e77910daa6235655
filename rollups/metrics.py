"""The rollup job's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RollupMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.buckets_written = Counter(
            "telemetry_rollups_buckets_written",
            "Rollup points written (one per bucket and series), by resolution",
            ["resolution"],
            registry=r,
        )
        self.passes = Counter(
            "telemetry_rollups_passes", "Passes of the job, by outcome", ["outcome"], registry=r
        )
        self.late_series = Counter(
            "telemetry_rollups_late_series",
            "Series recomputed because readings arrived after their buckets were rolled up",
            registry=r,
        )
        self.run_seconds = Histogram(
            "telemetry_rollups_run_seconds",
            "Wall time of one pass",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.lag_seconds = Gauge(
            "telemetry_rollups_lag_seconds",
            "Now minus the end of the last 1-minute bucket rolled up",
            registry=r,
        )
        self.last_success = Gauge(
            "telemetry_rollups_last_success_timestamp_seconds",
            "Unix time the last pass succeeded",
            registry=r,
        )
