"""Typed access to what ``create_app`` put on ``app.state`` (settings, the InfluxQL client)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxQL


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_influx(request: Request) -> InfluxQL:
    influx: InfluxQL | None = request.app.state.influx
    if influx is None:
        raise RuntimeError("the InfluxQL client is not open: run the app with its lifespan")
    return influx


def get_now() -> datetime:
    """The moment of the request (a dependency, so tests can pin it)."""
    return datetime.now(UTC)


Settings = Annotated[ApiSettings, Depends(get_settings)]
Influx = Annotated[InfluxQL, Depends(get_influx)]
Now = Annotated[datetime, Depends(get_now)]
