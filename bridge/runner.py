"""Take messages in batches, hand them to the processor, acknowledge once they are safe."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge import http
from bridge.flow import BatchFlow, next_batch
from bridge.settings import DEFAULT_CLIENT_ID, BridgeSettings
from processor.lvc import Bindings, Stamp
from processor.metrics import Metrics
from processor.pipeline import PreparedBatch, Processor
from processor.writer import Writer
from telemetry_common.errors import ConfigError
from telemetry_common.ids import check_id
from telemetry_common.influx_query import InfluxQLClient, InfluxUnavailable, Series
from telemetry_common.influxql import (
    count_seq_range_query,
    highest_seq_per_gateway_query,
    newest_per_charger_query,
)
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.topics import SHARE_GROUP

log = logging.getLogger(__name__)


def load_bindings(path: Path | None) -> Bindings:
    if path is None:
        return Bindings()
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError("TELEMETRY_BRIDGE_BINDINGS_FILE", f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError("TELEMETRY_BRIDGE_BINDINGS_FILE", f"{path}: need {{charger: gateway}}")
    return Bindings({check_id("charger id", c): check_id("gateway id", g) for c, g in raw.items()})


async def _query_with_retry(client: InfluxQLClient, q: str, max_backoff_s: float) -> list[Series]:
    delay = 0.5
    while True:
        try:
            return await client.query(q)
        except InfluxUnavailable as exc:
            log.warning("InfluxDB not available (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


async def warm_up(processor: Processor, client: InfluxQLClient, max_backoff_s: float) -> None:
    """Seed the last-value cache, the bindings and gap tracking from what InfluxDB holds."""
    series = await _query_with_retry(client, newest_per_charger_query(), max_backoff_s)
    newest: dict[str, Stamp] = {}
    for s in series:
        charger, gateway = s.tags.get("charger_id"), s.tags.get("gateway_id")
        if not charger or not gateway:
            continue
        for row in s.rows():
            stamp = Stamp(int(row["time"]), int(row["seq"]), gateway)
            held = newest.get(charger)
            if held is None or (held.ts_ns, held.seq) < (stamp.ts_ns, stamp.seq):
                newest[charger] = stamp
    for charger, stamp in newest.items():
        processor.lvc.offer(charger, stamp)
        processor.bindings.seed(charger, stamp.gateway_id)
    processor.metrics.lvc_chargers.set(len(processor.lvc))
    highs = await _query_with_retry(client, highest_seq_per_gateway_query(), max_backoff_s)
    for s in highs:
        gateway = s.tags.get("gateway_id")
        for row in s.rows() if gateway else []:
            processor.gaps.seed(str(gateway), int(row["seq"]), int(row["time"]))
    log.info("warm-up: %d chargers, %d gateways known from InfluxDB", len(newest), len(highs))


async def check_gaps(processor: Processor, client: InfluxQLClient, grace_s: float) -> None:
    """Confirm suspected seq gaps against InfluxDB, forever (a task of the bridge)."""

    async def count_stored(gw: str, first: int, last: int, lo: datetime, hi: datetime) -> int:
        series = await client.query(count_seq_range_query(gw, first, last, lo, hi))
        return int(series[0].values[0][1]) if series and series[0].values else 0

    reported = 0
    while True:
        await asyncio.sleep(min(grace_s, 10.0))
        try:
            await processor.gaps.confirm(count_stored, time.monotonic(), grace_s)
        except InfluxUnavailable as exc:
            log.warning("gap check postponed: %s", exc)
            continue
        missing = processor.gaps.missing()
        if missing != reported:
            log.warning(
                "seq gaps: %d readings missing (in no bridge's store): %s",
                missing,
                processor.gaps.report(),
            )
            reported = missing


def _routes(processor: Processor, client: AsyncMqttClient) -> dict[str, http.Handler]:
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
            "client_id": client.client_id,
            "ready": ok,
            "checks": checks,
            "mqtt_connect_error": client.last_connect_error,
            "bindings": len(processor.bindings),
            "bindings_provisioned": processor.bindings.provisioned,
            "seq_gaps": processor.gaps.report(),
            "metrics": metrics.snapshot(),
        }
        return 200, "application/json", orjson.dumps(doc)

    return {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)),
        "/healthz": lambda: (200, "application/json", b'{"status":"ok"}'),
        "/readyz": readyz,
        "/status": status,
    }


async def run_bridge(settings: BridgeSettings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (the batch in hand is finished and acknowledged first)."""
    stop = stop if stop is not None else asyncio.Event()
    topics = settings.topics
    metrics = Metrics()
    bindings = load_bindings(settings.bindings_file)
    async with (
        Writer(settings.influx) as writer,
        InfluxQLClient(settings.influx) as influxql,
        AsyncMqttClient(
            settings.mqtt,
            client_id=settings.client_id,
            subscriptions=(topics.shared_readings(settings.share_group),),
            manual_ack=True,
            receive_maximum=settings.max_inflight,
        ) as client,
    ):
        metrics.set_influx_ok(True)  # Writer.prepare() returned: InfluxDB answered
        processor = Processor(
            writer,
            client,
            topics,
            metrics=metrics,
            bindings=bindings,
            max_future=timedelta(seconds=settings.max_future_s),
            max_backoff_s=settings.max_backoff_s,
            live_interval_s=settings.live_interval_s,
            live_max_rate=settings.live_max_rate,
            live_busy_rate=settings.live_busy_rate,
            # Behind: messages wait beyond the batches in hand (full load or a backlog).
            busy=lambda: not client.messages.empty(),
            max_lines_per_write=settings.write_max_lines,
            write_concurrency=settings.write_concurrency,
        )
        await warm_up(processor, influxql, settings.max_backoff_s)
        metrics.mqtt_connected.set_function(lambda: 1.0 if client.connected else 0.0)
        metrics.seq_missing.set_function(lambda: float(processor.gaps.missing()))
        metrics.seq_gaps.set_function(lambda: float(processor.gaps.open_gaps()))
        metrics.live_waiting.set_function(lambda: float(processor.live.waiting))
        server = None
        if settings.http_port:
            server = await http.serve(
                settings.http_host, settings.http_port, _routes(processor, client)
            )
        if settings.share_group == SHARE_GROUP or settings.client_id == DEFAULT_CLIENT_ID:
            log.warning(
                "TELEMETRY_BRIDGE_SHARE_GROUP or _CLIENT_ID is the documented default: a gateway "
                "certificate that joins the group or takes over the session makes the broker "
                "drop readings it already acknowledged. Set both to unguessable values "
                "(`telemetry-stack up` and docker/gen-env.sh do; mosquitto/README.md)."
            )
        log.info(
            "bridge %s consuming %s into %s (%s API)",
            settings.client_id,
            topics.shared_readings(settings.share_group),
            settings.influx.url,
            settings.influx.api,
        )
        flow: BatchFlow[list[Received], PreparedBatch] = BatchFlow(
            settings.pipeline_depth, writers=settings.write_concurrency
        )
        metrics.unacked.set_function(lambda: float(client.messages.qsize() + flow.in_hand))

        async def take() -> list[Received]:
            return await next_batch(
                client.messages,
                settings.batch_max_messages,
                settings.batch_max_wait_s,
                settings.batch_max_bytes,
                flow.idle,
            )

        async def commit_and_ack(msgs: list[Received], batch: PreparedBatch) -> None:
            started = time.perf_counter()
            await processor.commit(batch)
            for msg in msgs:
                msg.ack()
            metrics.batch_seconds.observe(time.perf_counter() - started)

        try:
            async with asyncio.TaskGroup() as tg:
                live = tg.create_task(processor.live.run(), name="live-feed")
                gaps = tg.create_task(
                    check_gaps(processor, influxql, settings.gap_grace_s), name="gap-check"
                )
                await tg.create_task(
                    flow.run(take, processor.prepare_async, commit_and_ack, stop), name="flow"
                )
                await processor.live.flush(budget=False)
                live.cancel()
                gaps.cancel()
        finally:
            if server is not None:
                server.close()
        log.info("bridge stopped: %s", metrics.snapshot())
