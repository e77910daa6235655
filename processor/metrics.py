"""The processor's and bridge's Prometheus metrics, in a registry of their own (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        p = "telemetry_bridge_"
        self.messages = Counter(f"{p}messages", "MQTT messages received", registry=r)
        self.stored = Counter(f"{p}readings_stored", "Readings written to InfluxDB", registry=r)
        self.dead_lettered = Counter(
            f"{p}deadletters",
            "Readings (or whole messages) dead-lettered, by reason",
            ["reason"],
            registry=r,
        )
        self.limit_exceeded = Counter(
            f"{p}limit_exceeded",
            "Readings refused limit_exceeded (replays included), by limit (processor.limits)",
            ["limit"],
            registry=r,
        )
        self.write_retries = Counter(
            f"{p}write_retries", "InfluxDB writes retried after a transient error", registry=r
        )
        self.acks_published = Counter(
            f"{p}stored_acks_published", "Stored acknowledgements published", registry=r
        )
        self.acks_waiting = Gauge(
            f"{p}stored_acks_waiting", "Gateways with seqs waiting to be acknowledged", registry=r
        )
        self.live_published = Counter(f"{p}live_published", "Live values published", registry=r)
        self.live_waiting = Gauge(
            f"{p}live_waiting", "Chargers whose newest value waits for the live feed", registry=r
        )
        self.unacked = Gauge(
            f"{p}unacked_messages", "Messages received and not yet acknowledged", registry=r
        )
        self.lvc_chargers = Gauge(
            f"{p}lvc_chargers", "Chargers in the last-value cache", registry=r
        )
        self.bindings = Gauge(f"{p}bindings", "Chargers bound to a gateway", registry=r)
        self.bindings_refreshed = Gauge(
            f"{p}bindings_refreshed_timestamp_seconds",
            "Unix time of the last successful read of the bindings store (0: none yet)",
            registry=r,
        )
        self.mqtt_connected = Gauge(f"{p}mqtt_connected", "1 while connected", registry=r)
        self.influx_reachable = False
        self.influx_ok = Gauge(f"{p}influx_ok", "1 if the last InfluxDB request worked", registry=r)
        self.seq_missing = Gauge(
            f"{p}seq_missing", "Readings confirmed missing: a seq gap no bridge stored", registry=r
        )
        self.seq_gaps = Gauge(f"{p}seq_gaps_open", "Seq gaps suspected or confirmed", registry=r)
        self.batch_seconds = Histogram(
            f"{p}batch_seconds",
            "From taking a batch to acknowledging it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_seconds = Histogram(
            f"{p}write_seconds", "One InfluxDB write request", buckets=_LATENCY_BUCKETS, registry=r
        )

    def set_influx_ok(self, ok: bool) -> None:
        self.influx_reachable = ok
        self.influx_ok.set(1 if ok else 0)

    def snapshot(self) -> dict[str, float]:
        """Every sample as ``name{labels}: value``, for the JSON status document."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith(("_bucket", "_created")):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out
