"""``create_app(settings)``: the FastAPI application, with no import-time state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from query_api import problems
from query_api.routes import chargers, health
from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxQL, InfluxQLClient

DESCRIPTION = """Readings of EV chargers stored in InfluxDB.

Every `/v1` endpoint needs an `X-API-Key` of the role it names (an `admin` key may do all).
Every error is `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail`.
"""


def _version() -> str:
    try:
        return version("charger-telemetry")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def create_app(settings: ApiSettings, *, influx: InfluxQL | None = None) -> FastAPI:
    """The API for ``settings``. Without ``influx``, the lifespan opens an :class:`InfluxQLClient`
    on ``settings.influx`` and closes it at shutdown; a given ``influx`` is used as it is."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if influx is None:
                app.state.influx = await stack.enter_async_context(InfluxQLClient(settings.influx))
            try:
                yield
            finally:
                app.state.influx = influx

    app = FastAPI(
        title="charger-telemetry API",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.influx = influx
    app.state.api_keys = {
        role: key.get_secret_value().encode() for role, key in settings.keys.items()
    }
    problems.install(app)
    app.include_router(health.router)
    app.include_router(chargers.router)
    return app
