"""``edge-agent``: run the agent; ``edge-agent outbox ...`` is :mod:`edge_agent.outbox_cli`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edge_agent import metrics
from edge_agent.agent import EdgeAgent, GatewayState, mqtt_client
from edge_agent.capture import Capture
from edge_agent.jsonl import read_jsonl
from edge_agent.lock import OutboxBusyError, exclusive
from edge_agent.ocpp import ocpp_source
from edge_agent.outbox import Outbox
from edge_agent.outbox_cli import load_settings, outbox_app
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Pace, Simulator, run_simulator
from edge_agent.systemd import Notifier
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging

log = logging.getLogger("edge_agent")

app = typer.Typer(help="Charger gateway agent: capture, store durably, publish over MQTT 5/TLS.")
app.add_typer(outbox_app, name="outbox")


class SourceName(StrEnum):
    sim = "sim"
    ocpp = "ocpp"
    jsonl = "jsonl"


@app.command()
def run(
    source: Annotated[SourceName, typer.Option(help="Where readings come from.")] = SourceName.sim,
    file: Annotated[
        Path | None, typer.Option(help="jsonl: read this file instead of stdin.")
    ] = None,
) -> None:
    """Run the agent until SIGTERM / Ctrl-C (or, for a finite jsonl input, until all is sent).

    Sources: ``sim`` (simulated chargers), ``ocpp`` (a local OCPP 1.6J central system on
    TELEMETRY_EDGE_OCPP__HOST:__PORT; chargers connect to ws://HOST:PORT/.../<charger_id>),
    ``jsonl`` (one reading per line from --file or stdin)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_run(settings, source, file))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # SIGINT / SIGTERM: the agent already flushed and disconnected
    except (ConfigError, OutboxBusyError) as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ExceptionGroup as group:  # raised inside the agent's tasks (a source's settings)
        refusal = _refusal(group)
        if refusal is None:
            raise
        typer.echo(f"edge-agent: {refusal}", err=True)
        raise typer.Exit(2) from group


def _refusal(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The configuration error that ended the agent, if that is what ended it."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    refusals = [e for e in leaves if isinstance(e, ConfigError | OutboxBusyError)]
    return refusals[0] if len(refusals) == len(leaves) else None


async def _run(settings: EdgeSettings, source: SourceName, file: Path | None) -> None:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive(settings.outbox_path))
        outbox = stack.enter_context(Outbox(settings.outbox_path, settings.outbox.budget()))
        systemd = Notifier()
        systemd.ready()  # the outbox takes readings from here on, connected or not
        watchdog = asyncio.create_task(systemd.watchdog(), name="watchdog")
        stack.callback(watchdog.cancel)
        stack.callback(systemd.stopping)
        captures: AsyncIterator[list[Capture]]
        pace: Pace | None = None
        if source is SourceName.sim:
            sim = Simulator(settings.gateway_id, settings.sim.chargers, seed=settings.sim.seed)
            pace = Pace(settings.sim.interval_s)
            captures = run_simulator(sim, pace)
        elif source is SourceName.ocpp:
            captures = ocpp_source(settings.ocpp)
        else:
            stream = stack.enter_context(file.open("rb")) if file else sys.stdin.buffer
            captures = read_jsonl(stream)
        gateway = GatewayState(outbox, settings.mqtt.cert_file)
        async with mqtt_client(settings, gateway=gateway) as client:
            agent = EdgeAgent(settings, outbox, client, pace=pace, gateway=gateway)
            if settings.metrics_port:
                registry = metrics.registry_for(
                    outbox,
                    agent.counters,
                    client,
                    cert_not_after=gateway.not_after,
                    clock=agent.clock,
                )
                server = metrics.serve(settings.metrics_host, settings.metrics_port, registry)
                stack.callback(server.shutdown)
                log.info(
                    "metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port
                )
            log.info(
                "edge agent %s started (source %s, outbox %s)",
                settings.gateway_id,
                source.value,
                settings.outbox_path,
            )
            try:
                await agent.run(captures)
            finally:
                await agent.say_offline()
                log.info("edge agent stopping: %s", dataclasses.asdict(agent.counters))


def main() -> None:
    app()
