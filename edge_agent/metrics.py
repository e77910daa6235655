"""Prometheus metrics of the agent, collected at scrape time from the outbox and the counters.

Served by prometheus-client's own HTTP server thread on ``METRICS_HOST:METRICS_PORT``
(loopback by default; off when the port is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.budget import REASONS
from edge_agent.clock import ClockWatch
from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters
from edge_agent.renewal import RenewalStats

P = "telemetry_edge_"


class _Connection(Protocol):
    connects: int

    @property
    def connected(self) -> bool: ...


class AgentCollector(Collector):
    def __init__(
        self,
        outbox: Outbox,
        counters: Counters,
        client: _Connection,
        cert_not_after: datetime | Callable[[], datetime | None] | None = None,
        clock: ClockWatch | None = None,
        renewal: RenewalStats | None = None,
    ) -> None:
        self._outbox = outbox
        self._counters = counters
        self._client = client
        # A callable is read at every scrape (a renewal moves it).
        self._cert_not_after = (
            cert_not_after if callable(cert_not_after) else lambda: cert_not_after
        )
        self._clock = clock
        self._renewal = renewal

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        st = self._outbox.stats()
        c = self._counters
        yield GaugeMetricFamily(f"{P}outbox_depth", "Readings waiting in the outbox", st.pending)
        yield GaugeMetricFamily(
            f"{P}outbox_bytes", "Bytes of the readings waiting", st.pending_bytes
        )
        yield GaugeMetricFamily(
            f"{P}outbox_oldest_age_seconds",
            "Age of the oldest unsent reading (0 when empty)",
            st.oldest_age_s or 0.0,
        )
        yield GaugeMetricFamily(f"{P}outbox_file_bytes", "Outbox file + WAL size", st.file_bytes)
        yield GaugeMetricFamily(
            f"{P}outbox_parked", "Readings parked after a refusal (kept)", st.parked
        )
        yield GaugeMetricFamily(
            f"{P}outbox_disk_full", "1 while a disk-full episode caps the outbox", st.disk_full
        )
        dropped = CounterMetricFamily(
            f"{P}outbox_dropped",
            "Readings dropped without a PUBACK, by reason (kept across restarts)",
            labels=["reason"],
        )
        for reason in REASONS:
            dropped.add_metric([reason], st.dropped.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily(
            f"{P}outbox_dropped_in_flight",
            "Readings the budget dropped while their batch awaits its PUBACK "
            "(counted as dropped only if it fails)",
            st.dropped_in_flight,
        )
        for name, text, value in (
            ("captured", "Readings stored in the outbox by this process", c.captured),
            ("published", "Readings acknowledged by the broker (PUBACK)", c.published),
            (
                "confirmed",
                "Readings the bridges acknowledged as stored (then deleted)",
                c.confirmed,
            ),
            (
                "stored_timeouts",
                "Times unconfirmed readings were sent again (no stored acknowledgement at all "
                "within the timeout)",
                c.stored_timeouts,
            ),
            (
                "stored_holes",
                "Batches sent again alone (later ones were confirmed stored, they were not)",
                c.stored_holes,
            ),
            ("batches", "Batches acknowledged by the broker", c.batches),
            ("parked", "Readings parked by this process", c.parked),
            ("publish_retries", "Batches not acknowledged (sent again later)", c.retries),
            ("commands", "Commands executed", c.commands),
            ("commands_refused", "Commands refused (response topic not ours)", c.commands_refused),
            ("reconnects", "MQTT reconnections after the first connect", self._reconnects()),
        ):
            yield CounterMetricFamily(f"{P}{name}", text, value)
        yield GaugeMetricFamily(
            f"{P}unconfirmed",
            "Readings sent and not yet acknowledged as stored",
            c.unconfirmed,
        )
        yield GaugeMetricFamily(f"{P}mqtt_connected", "1 while connected", self._client.connected)
        not_after = self._cert_not_after()
        if not_after is not None:
            yield GaugeMetricFamily(
                f"{P}certificate_expiry_timestamp_seconds",
                "notAfter of the gateway's client certificate (Unix time; absent without one)",
                not_after.timestamp(),
            )
        if self._renewal is not None:
            yield CounterMetricFamily(
                f"{P}certificate_renewals",
                "Client certificates renewed by this process",
                self._renewal.renewals,
            )
            yield CounterMetricFamily(
                f"{P}certificate_renewal_failures",
                "Failed renewal attempts (retried with backoff; see the WARNING log)",
                self._renewal.failures,
            )
        if self._clock is not None:
            yield from self._clock_metrics(self._clock)

    @staticmethod
    def _clock_metrics(clock: ClockWatch) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        unsync = GaugeMetricFamily(
            f"{P}clock_unsynchronised",
            "1 while this gateway's clock is unsynchronised, by source: os (the kernel's NTP "
            "status), cloud (more than CLOCK_MAX_SKEW_S off the bridges' clock); absent while "
            "the source cannot tell",
            labels=["source"],
        )
        for source, value in clock.unsynchronised().items():
            if value is not None:
                unsync.add_metric([source], float(value))
        yield unsync
        offset = clock.offset_s()
        if offset is not None:
            yield GaugeMetricFamily(
                f"{P}clock_offset_seconds",
                "This clock minus the bridges' (from the stored acknowledgements; too large by "
                "their transit)",
                offset,
            )
        yield CounterMetricFamily(
            f"{P}readings_too_old",
            "Readings captured stamped more than MAX_AGE_DAYS back (sent anyway; the cloud "
            "dead-letters them ts_too_old)",
            clock.too_old,
        )

    def _reconnects(self) -> int:
        return max(0, self._client.connects - 1)


def registry_for(
    outbox: Outbox,
    counters: Counters,
    client: _Connection,
    *,
    cert_not_after: datetime | Callable[[], datetime | None] | None = None,
    clock: ClockWatch | None = None,
    renewal: RenewalStats | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(outbox, counters, client, cert_not_after, clock, renewal))
    return registry


def serve(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Start the metrics HTTP server (a daemon thread); returns it (``.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
