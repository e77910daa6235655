"""``create_app(settings)``: the FastAPI application, with no import-time state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from query_api import problems
from query_api.acks import StoredAcks
from query_api.alarms.loop import AlarmLoop
from query_api.broker import BrokerLink, Publisher
from query_api.clock import Clock, SystemClock
from query_api.cursor import Cursors
from query_api.idempotency import IdempotencyKeys
from query_api.latest.index import ChargerIndex
from query_api.latest.mirror import LiveMirror
from query_api.latest.stored import StoredLatest
from query_api.latest.sweep import confirm_forever
from query_api.lean import LeanDispatch, routes_of
from query_api.metrics import ApiMetrics, TimingMiddleware
from query_api.pagecache import PageCache
from query_api.rollups import RollupFields
from query_api.routes import alarms as alarm_routes
from query_api.routes import (
    bindings,
    chargers,
    deadletters,
    enrollment,
    fleet,
    gateways,
    health,
    history,
    ingest,
    pipeline,
    sessions,
    stats,
    ui,
)
from query_api.seqs import SeqAllocator
from query_api.settings import ApiSettings
from telemetry_common.bindings import read_bindings_file
from telemetry_common.influx_query import InfluxQL, InfluxQLClient
from telemetry_common.influx_write import InfluxWriter, create_retention_policy, make_writer
from telemetry_common.settings import env_name
from telemetry_common.storage import KEEP_RP

log = logging.getLogger(__name__)

DESCRIPTION = """Readings of EV chargers stored in InfluxDB, and HTTP ingest into the pipeline.

Every `/v1` endpoint needs an `X-API-Key` of the role it names (an `admin` key may do all).
Every error is `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail`.
`latest` is served from the API's mirror of the live feed when that is provably current, else
from InfluxDB; see docs/query-api.md.
"""


def _version() -> str:
    try:
        return version("charger-telemetry")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _attach(app: FastAPI, influx: InfluxQL | None) -> None:
    """``influx`` and what reads through it (ingest seq numbers, stored latest lookups)."""
    settings = app.state.settings
    app.state.influx = influx
    app.state.seqs = SeqAllocator(influx, settings.ingest_seq_file) if influx is not None else None
    app.state.stored_latest = StoredLatest(influx) if influx is not None else None


async def _create_keep(app: FastAPI) -> None:
    """The retention policy of the bindings store (the bridges create it too: whoever first)."""
    influx = app.state.settings.influx
    if await create_retention_policy(influx, KEEP_RP) or influx.api != "v1":
        app.state.keep_rp_ready = True


def create_app(
    settings: ApiSettings,
    *,
    influx: InfluxQL | None = None,
    broker: Publisher | None = None,
    clock: Clock | None = None,
    writer: InfluxWriter | None = None,
) -> FastAPI:
    """The API for ``settings``. Without ``influx``, the lifespan opens an :class:`InfluxQLClient`
    on ``settings.influx``; without ``broker`` and with ``settings.mqtt``, it opens a
    :class:`BrokerLink` that feeds ``app.state.mirror`` and ``app.state.acks`` (a given broker's
    owner hands acknowledgements to ``app.state.acks`` itself). Given ones are used as they are;
    ``clock`` (default: the system's) is read by every route. Without ``writer``, the lifespan
    opens one on ``settings.influx`` (the bindings store's changes) and creates the retention
    policy ``keep``."""
    mirror = LiveMirror(settings.topics, max_chargers=settings.mirror_max_chargers)
    acks = StoredAcks(settings.topics, [settings.ingest_gateway, *settings.ingest_keys])
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if influx is None:
                _attach(app, await stack.enter_async_context(InfluxQLClient(settings.influx)))
            if writer is None:
                app.state.writer = make_writer(settings.influx)
                stack.push_async_callback(app.state.writer.aclose)
                keep = asyncio.create_task(_create_keep(app), name="keep-rp")
                stack.push_async_callback(_cancel, keep)
            alarms = None
            if settings.alarms and broker is None and settings.mqtt is not None:
                alarms = AlarmLoop(
                    settings, mirror, app.state.influx, app.state.writer,
                    lambda: app.state.broker, metrics, app.state.clock,
                )  # fmt: skip
            if broker is None and settings.mqtt is not None:
                app.state.broker = await stack.enter_async_context(
                    BrokerLink(settings, mirror, acks, alarms.on_message if alarms else None)
                )
                log.info("live mirror: connecting to %s:%s", settings.mqtt.host, settings.mqtt.port)
            if app.state.broker is not None and settings.latest_sweep_s > 0:
                sweeping = asyncio.create_task(
                    confirm_forever(
                        app.state.charger_index,
                        mirror,
                        app.state.influx,
                        settle_s=settings.live_settle_s,
                        every_s=settings.latest_sweep_s,
                        live=lambda: bool(app.state.broker.connected),
                        metrics=metrics,
                    ),
                    name="mirror-sweep",
                )
                stack.push_async_callback(_cancel, sweeping)
            if alarms is not None:
                evaluating = asyncio.create_task(alarms.run(), name="alarms")
                stack.push_async_callback(_cancel, evaluating)
            try:
                yield
            finally:
                _attach(app, influx)  # nothing keeps a client the exit stack closed
                app.state.broker = broker
                app.state.writer = writer

    app = FastAPI(
        title="charger-telemetry API",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    _attach(app, influx)
    app.state.broker = broker
    app.state.writer = writer
    app.state.keep_rp_ready = False
    app.state.file_bindings = (
        read_bindings_file(settings.bindings_file, env_name(ApiSettings, "bindings_file"))
        if settings.bindings_file is not None
        else {}
    )
    app.state.mirror = mirror
    app.state.acks = acks
    seq_file = settings.ingest_seq_file
    app.state.idempotency = IdempotencyKeys(
        seq_file.with_name(seq_file.name + ".keys") if seq_file is not None else None,
        ttl_s=settings.ingest_idempotency_ttl_s,
        max_keys=settings.ingest_idempotency_max_keys,
    )
    app.state.metrics = metrics
    app.state.clock = clock if clock is not None else SystemClock()
    app.state.charger_index = ChargerIndex(settings.chargers_cache_s)
    app.state.history_cache = PageCache(settings.history_cache_s, settings.history_cache_max_bytes)
    app.state.sessions_cache = PageCache(
        settings.sessions_cache_s, settings.history_cache_max_bytes
    )
    app.state.rollup_fields = RollupFields(ttl_s=60.0)
    cursor_secret = settings.cursor_secret
    app.state.cursors = Cursors(
        cursor_secret.get_secret_value().encode()
        if cursor_secret is not None
        else secrets.token_bytes(32)  # this process's own: see ApiSettings.cursor_secret
    )
    app.state.api_keys = {
        role: key.get_secret_value().encode() for role, key in settings.keys.items()
    }
    app.state.ingest_keys = {
        gw: key.get_secret_value().encode() for gw, key in settings.ingest_keys.items()
    }
    metrics.mirror_chargers.set_function(lambda: float(len(mirror)))
    metrics.watch_history_cache(app.state.history_cache)
    metrics.broker_connected.set_function(
        lambda: 1.0 if app.state.broker is not None and app.state.broker.connected else 0.0
    )
    problems.install(app)
    # Starlette wraps in reverse order: the lean dispatch runs inside the timing middleware.
    hot = [
        *routes_of(chargers.router, chargers.latest),
        *routes_of(history.router, history.history),
    ]
    app.add_middleware(LeanDispatch, api=app, routes=hot)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    for module in (
        health,
        chargers,
        history,
        stats,
        fleet,
        ingest,
        pipeline,
        gateways,
        bindings,
        deadletters,
        enrollment,
        alarm_routes,
        sessions,
        ui,
    ):
        app.include_router(module.router)
    return app
