"""The bridge's operational endpoints on a minimal HTTP/1.1 server (GET only, no body).

The bridge has no API of its own, so a web framework would be all weight: this serves
``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` on the asyncio loop it already runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.core import Processor
from telemetry_common.mqtt import AsyncMqttClient

log = logging.getLogger(__name__)

#: A route answers (status, content type, body).
Handler = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(host: str, port: int, routes: Mapping[str, Handler]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method != "GET":
                status, ctype, body = 405, "text/plain", b"GET only\n"
            elif path in routes:
                status, ctype, body = routes[path]()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    log.info(
        "bridge HTTP endpoints on http://%s:%d (/metrics /healthz /readyz /status)", host, port
    )
    return server


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

    def status() -> tuple[int, str, bytes]:
        ok, checks = ready()
        doc = {
            # The public name: the client id itself carries the deployment's secret.
            "client_id": client.name,
            "ready": ok,
            "checks": checks,
            "mqtt_connect_error": client.last_connect_error,
            **processor.state.status(),
            "metrics": metrics.snapshot(),
        }
        return 200, "application/json", orjson.dumps(doc)

    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "application/json", b'{"status":"ok"}'),
        "/readyz": readyz,
        "/status": status,
    }
