"""The job as a service: retention at start, a pass every ``INTERVAL_S``, ``/metrics`` and
``/healthz`` (:func:`telemetry_common.ops_http.serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rollups import retention
from rollups.job import PassResult, RollupJob
from rollups.metrics import RollupMetrics
from rollups.settings import RollupsSettings
from telemetry_common.influx_query import InfluxError, InfluxQLClient
from telemetry_common.influx_write import WriteError, Writer
from telemetry_common.job_command import MAX_BACKOFF_S, run_passes
from telemetry_common.ops_http import Handler, serve

log = logging.getLogger(__name__)


def ops_routes(metrics: RollupMetrics) -> dict[str, Handler]:
    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "application/json", b'{"status":"ok"}'),
    }


async def _prepare_retention(
    client: InfluxQLClient, settings: RollupsSettings, stop: asyncio.Event
) -> None:
    """The rollup retention policies, retried with capped backoff until InfluxDB answers."""
    if not retention.managed(settings):
        log.warning("%s", retention.operator_instructions(settings))
        return
    delay = 0.5
    while not stop.is_set():
        try:
            await retention.ensure_rollup_policies(client, settings)
        except InfluxError as exc:
            log.warning("retention policies not set (%s); retrying in %.1fs", exc, delay)
        else:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, MAX_BACKOFF_S)


async def run_service(settings: RollupsSettings, stop: asyncio.Event, *, once: bool) -> bool:
    """Passes until ``stop`` is set (``once``: one); True if the last pass succeeded."""
    metrics = RollupMetrics()
    server = None
    if settings.http_port and not once:
        server = await serve(
            settings.http_host, settings.http_port, ops_routes(metrics), name="rollups"
        )
    try:
        async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
            await _prepare_retention(client, settings, stop)
            job = RollupJob(settings, client, writer, metrics)
            raw_retention_set = not retention.managed(settings)

            async def one_pass() -> bool:
                nonlocal raw_retention_set
                ok = await _one_pass(job, metrics)
                if ok is not None and ok.caught_up and not raw_retention_set:
                    # Only now: a first deployment on old readings rolls them up first.
                    try:
                        await retention.apply_raw_retention(client, settings)
                        raw_retention_set = True
                    except InfluxError as exc:
                        log.warning("raw retention not set (%s); retrying next pass", exc)
                return ok is not None

            return await run_passes(one_pass, interval_s=settings.interval_s, stop=stop, once=once)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


async def _one_pass(job: RollupJob, metrics: RollupMetrics) -> PassResult | None:
    try:
        result = await job.run_pass()
    except (InfluxError, WriteError) as exc:
        metrics.passes.labels("failed").inc()
        log.warning("rollup pass failed: %s", exc)
        return None
    metrics.passes.labels("ok").inc()
    if result.written["1m"] or result.written["1h"] or result.late_series:
        log.info(
            "pass: %d 1-minute and %d 1-hour points, %d late series, done until %s",
            result.written["1m"],
            result.written["1h"],
            result.late_series,
            result.done_until.isoformat() if result.done_until else None,
        )
    return result


async def run_backfill(settings: RollupsSettings, start: datetime, end: datetime) -> PassResult:
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        if retention.managed(settings):
            await retention.ensure_rollup_policies(client, settings)
        return await RollupJob(settings, client, writer).backfill(start, end)
