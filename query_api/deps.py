"""Typed access to what ``create_app`` put on ``app.state`` (settings, clients, the mirror, the
clock).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread,
which cost more than the whole ``latest`` answer from memory. The hot ``latest`` route takes no
dependency at all and reads ``app.state`` through the plain functions here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request

from query_api.broker import Publisher
from query_api.latest.mirror import LiveMirror
from query_api.latest.stored import StoredLatest
from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxQL


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def influx_of(request: Request) -> InfluxQL:
    influx: InfluxQL | None = request.app.state.influx
    if influx is None:
        raise RuntimeError("the InfluxQL client is not open: run the app with its lifespan")
    return influx


def stored_latest_of(request: Request) -> StoredLatest:
    stored: StoredLatest | None = request.app.state.stored_latest
    if stored is None:
        raise RuntimeError("the InfluxQL client is not open: run the app with its lifespan")
    return stored


async def get_influx(request: Request) -> InfluxQL:
    return influx_of(request)


async def get_mirror(request: Request) -> LiveMirror:
    mirror: LiveMirror = request.app.state.mirror
    return mirror


async def get_broker(request: Request) -> Publisher | None:
    """The broker session, or None when the API runs without one (TELEMETRY_API_MQTT unset)."""
    broker: Publisher | None = request.app.state.broker
    return broker


def live(request: Request) -> bool:
    """Whether the broker session is up (the mirror is being fed)."""
    broker: Publisher | None = request.app.state.broker
    return broker is not None and bool(broker.connected)


async def get_now(request: Request) -> datetime:
    """The moment of the request, from the app's clock."""
    now: datetime = request.app.state.clock.now()
    return now


async def get_mono(request: Request) -> float:
    """A monotonic clock reading, from the app's clock."""
    mono: float = request.app.state.clock.mono()
    return mono


Settings = Annotated[ApiSettings, Depends(get_settings)]
Influx = Annotated[InfluxQL, Depends(get_influx)]
Mirror = Annotated[LiveMirror, Depends(get_mirror)]
Broker = Annotated[Publisher | None, Depends(get_broker)]
Now = Annotated[datetime, Depends(get_now)]
Mono = Annotated[float, Depends(get_mono)]
