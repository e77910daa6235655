"""The bridge's wiring: the MQTT intake feeds the processor, and acknowledges what it committed.

One reading's path: the broker's shared subscription -> ``client.messages`` (at most
``MAX_INFLIGHT`` unacknowledged, the broker holds the rest) -> :class:`bridge.fair.FairQueue`
(round-robin per gateway) -> :func:`bridge.flow.next_batch`
-> :meth:`Processor.prepare` -> :meth:`Processor.commit` (InfluxDB, dead letters, state, live
feed) -> ``ack()`` here. Nothing comes back from the processor but "committed".
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridge import http
from bridge.fair import FairQueue
from bridge.flow import BatchFlow, next_batch
from bridge.settings import DEFAULT_CLIENT_ID, BridgeSettings
from processor.core import Processor
from processor.metrics import Metrics
from processor.prepare import PreparedBatch
from processor.state.bindings import load_bindings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer, create_retention_policy
from telemetry_common.mqtt import AsyncMqttClient, Received
from telemetry_common.redact import redact
from telemetry_common.settings import env_name
from telemetry_common.storage import KEEP_RP
from telemetry_common.topics import SHARE_GROUP

log = logging.getLogger(__name__)


def _warn_if_guessable(settings: BridgeSettings) -> None:
    if settings.share_group == SHARE_GROUP or settings.client_id == DEFAULT_CLIENT_ID:
        log.warning(
            "%s or %s is the documented default: a gateway certificate that joins the group or "
            "takes over the session makes the broker drop readings it already acknowledged. "
            "Set both to unguessable values (`telemetry-stack up` and docker/gen-env.sh do; "
            "mosquitto/README.md).",
            env_name(BridgeSettings, "share_group"),
            env_name(BridgeSettings, "client_id"),
        )


async def run_bridge(settings: BridgeSettings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (the batch in hand is finished and acknowledged first)."""
    stop = stop if stop is not None else asyncio.Event()
    topics = settings.topics
    subscription = topics.shared_readings(settings.share_group)
    replays = topics.shared_replays(settings.share_group)
    metrics = Metrics()
    bindings = load_bindings(
        settings.bindings_file, env_name(BridgeSettings, "bindings_file"), mode=settings.bindings
    )
    if bindings.first_come:
        log.warning(
            "%s=first-come: a charger bound nowhere is bound to the first gateway that sends for "
            "it. A development option: in a deployment, bind chargers (docs/deploy.md).",
            env_name(BridgeSettings, "bindings"),
        )
    async with (
        Writer(settings.influx) as writer,
        InfluxQLClient(settings.influx) as storage,
        AsyncMqttClient(
            settings.mqtt,
            client_id=settings.client_id,
            subscriptions=(subscription, replays),
            manual_ack=True,
            receive_maximum=settings.max_inflight,
            # Both carry the deployment's secret: logs and /status show their public names.
            secret_names=(settings.client_id, settings.share_group),
        ) as client,
    ):
        metrics.set_influx_ok(True)  # Writer's prepare() returned: InfluxDB answered
        intake = FairQueue(client.messages)  # batches take a fair share of each gateway's
        metrics.mqtt_connected.set_function(lambda: 1.0 if client.connected else 0.0)
        processor = Processor.build(
            settings,
            topics,
            writer=writer,
            mqtt=client,
            metrics=metrics,
            bindings=bindings,
            # Behind: messages wait beyond the batches in hand (full load or a backlog).
            busy=lambda: not intake.empty(),
            database=settings.influx.database,
        )
        # The API creates it too; whoever comes first (the store is read through it).
        await create_retention_policy(settings.influx, KEEP_RP)
        await processor.warm_up(
            storage,
            settings.max_backoff_s,
            budget_s=settings.warmup_budget_s,
            window_s=settings.warmup_window_s,
        )
        server = None
        if settings.http_port:
            routes = http.ops_routes(processor, client)
            server = await http.serve(settings.http_host, settings.http_port, routes)
        _warn_if_guessable(settings)
        log.info(
            "bridge %s consuming %s into %s (%s API)",
            client.name,
            redact(subscription, (settings.share_group,)),
            settings.influx.url,
            settings.influx.api,
        )
        flow: BatchFlow[list[Received], PreparedBatch] = BatchFlow(
            settings.pipeline_depth, writers=settings.write_concurrency
        )
        metrics.unacked.set_function(lambda: float(intake.qsize() + flow.in_hand))

        async def take() -> list[Received]:
            return await next_batch(
                intake,
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
                tasks = tg.create_task(
                    processor.run(storage, settings.gap_grace_s, settings.bindings_refresh_s),
                    name="processor",
                )
                await tg.create_task(
                    flow.run(take, processor.prepare, commit_and_ack, stop), name="flow"
                )
                await processor.flush()
                tasks.cancel()
        finally:
            if server is not None:
                server.close()
        log.info("bridge stopped: %s", metrics.snapshot())
