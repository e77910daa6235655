"""Liveness, readiness and metrics; no key needed.

``/healthz``: 200 while the process serves HTTP (touches no dependency).
``/readyz``: 200 when InfluxDB answers a read and (when a broker is configured) the MQTT session
is up; 503 otherwise, naming what is down. While the broker is down the API still answers reads
from InfluxDB (degraded), but ingest cannot work, so it is not ready.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from query_api.deps import Influx, Settings
from query_api.metrics import ApiMetrics
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxError

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str | None = None


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


@router.get("/healthz", summary="Liveness (no key needed)")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="Readiness: InfluxDB answers and the broker session is up (no key needed)",
    responses={503: {"model": Readiness, "description": "a dependency is down"}},
)
async def readyz(request: Request, influx: Influx, settings: Settings) -> JSONResponse:
    checks: dict[str, Check] = {}
    try:
        await influx.query(influxql.ping_query())
        checks["influxdb"] = Check(ok=True)
    except InfluxError as exc:
        checks["influxdb"] = Check(ok=False, detail=type(exc).__name__)
    broker = request.app.state.broker
    if settings.mqtt is not None:
        up = broker is not None and bool(broker.connected)
        checks["broker"] = Check(ok=up, detail=None if up else "not connected")
    ready = all(c.ok for c in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (no key needed)", include_in_schema=True)
async def metrics(request: Request) -> Response:
    m: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
