"""The job as a service: ``keep`` at start, a pass every ``INTERVAL_S``, ``/metrics`` and
``/healthz`` (:func:`telemetry_common.ops_http.serve`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sessions.job import PassResult, SessionJob
from sessions.metrics import SessionMetrics
from sessions.settings import SessionsSettings
from telemetry_common.influx_query import InfluxError, InfluxQLClient
from telemetry_common.influx_write import WriteError, Writer, create_retention_policy
from telemetry_common.job_command import run_passes
from telemetry_common.ops_http import Handler, serve
from telemetry_common.storage import KEEP_RP

log = logging.getLogger(__name__)


def ops_routes(metrics: SessionMetrics) -> dict[str, Handler]:
    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "application/json", b'{"status":"ok"}'),
    }


async def run_service(settings: SessionsSettings, stop: asyncio.Event, *, once: bool) -> bool:
    """Passes until ``stop`` is set (``once``: one); True if the last pass succeeded."""
    metrics = SessionMetrics()
    server = None
    if settings.http_port and not once:
        server = await serve(
            settings.http_host, settings.http_port, ops_routes(metrics), name="sessions"
        )
    try:
        await create_retention_policy(settings.influx, KEEP_RP)
        async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
            job = SessionJob(settings, client, writer, metrics)

            async def one_pass() -> bool:
                return await _one_pass(job, metrics) is not None

            return await run_passes(one_pass, interval_s=settings.interval_s, stop=stop, once=once)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


async def _one_pass(job: SessionJob, metrics: SessionMetrics) -> PassResult | None:
    try:
        result = await job.run_pass()
    except (InfluxError, WriteError) as exc:
        metrics.passes.labels("failed").inc()
        log.warning("sessions pass failed: %s", exc)
        return None
    metrics.passes.labels("ok").inc()
    if any(result.written.values()) or result.marks:
        log.info(
            "pass: %d sessions computed, written %s, %d late marks, %d deferred",
            result.computed,
            result.written,
            result.marks,
            result.deferred,
        )
    return result


async def run_backfill(settings: SessionsSettings, start: datetime, end: datetime) -> PassResult:
    await create_retention_policy(settings.influx, KEEP_RP)
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        return await SessionJob(settings, client, writer).backfill(start, end)
