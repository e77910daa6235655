"""The bridge's operational endpoints (``/metrics``, ``/healthz``, ``/readyz``, ``/status``),
served by :func:`telemetry_common.ops_http.serve` on the asyncio loop the bridge already runs."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.core import Processor
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.ops_http import Handler, serve

__all__ = ["Handler", "ops_routes", "serve"]


def ops_routes(processor: Processor, client: AsyncMqttClient) -> dict[str, Handler]:
    """``/metrics``, ``/healthz``, ``/readyz`` (ready: connected to the broker and InfluxDB's
    last answer was good) and ``/status`` (JSON: readiness, the processor's state, metrics)."""
    metrics = processor.metrics

    def ready() -> tuple[bool, dict[str, bool]]:
        checks = {"mqtt": client.connected, "influxdb": metrics.influx_reachable}
        return all(checks.values()), checks

    def readyz() -> tuple[int, str, bytes]:
        ok, checks = ready()
        return (200 if ok else 503), "application/json", orjson.dumps(checks)

    def horizon() -> dict[str, object]:
        """The ts_too_old horizon and where it comes from (setting, retention, fallback)."""
        h = processor.horizon
        if h is None:
            return {}
        return {"ts_horizon": {"max_age_s": h.window.max_age.total_seconds(), "source": h.source}}

    def status() -> tuple[int, str, bytes]:
        ok, checks = ready()
        doc = {
            # The public name: the client id itself carries the deployment's secret.
            "client_id": client.name,
            "ready": ok,
            "checks": checks,
            "mqtt_connect_error": client.last_connect_error,
            **processor.state.status(),
            **horizon(),
            "metrics": metrics.snapshot(),
        }
        return 200, "application/json", orjson.dumps(doc)

    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "application/json", b'{"status":"ok"}'),
        "/readyz": readyz,
        "/status": status,
    }
