"""``edge-agent``: run the agent; ``edge-agent outbox ...`` is :mod:`edge_agent.outbox_cli`,
``edge-agent ocpp ...`` :mod:`edge_agent.ocpp_cli`."""

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

from edge_agent import enroll as enroll_mod
from edge_agent import metrics
from edge_agent.agent import EdgeAgent, GatewayState, mqtt_client
from edge_agent.capture import Capture
from edge_agent.jsonl import read_jsonl
from edge_agent.lock import OutboxBusyError, exclusive
from edge_agent.ocpp import ocpp_source
from edge_agent.ocpp_cli import ocpp_app
from edge_agent.outbox import Outbox
from edge_agent.outbox_cli import load_settings, outbox_app
from edge_agent.renewal import Renewal
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Pace, Simulator, run_simulator
from edge_agent.systemd import Notifier
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging

log = logging.getLogger("edge_agent")

app = typer.Typer(help="Charger gateway agent: capture, store durably, publish over MQTT 5/TLS.")
app.add_typer(outbox_app, name="outbox")
app.add_typer(ocpp_app, name="ocpp")


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

    Sources: ``sim`` (simulated chargers), ``ocpp`` (a local OCPP 1.6J central system, or with
    TELEMETRY_EDGE_OCPP__MODE=proxy a relay to the operator's CSMS, on
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


@app.command()
def enroll(
    url: Annotated[str, typer.Option(help="The enrollment API, https://HOST[:PORT].")],
    token: Annotated[
        str,
        typer.Option(
            envvar="TELEMETRY_EDGE_ENROLL_TOKEN",
            help="The one-time token (`telemetry-stack pki token GATEWAY_ID`); or from the "
            "environment, out of the process list.",
        ),
    ],
    ca_file: Annotated[
        Path | None,
        typer.Option(help="CA certificate to verify the API's TLS with (default: the system's)."),
    ] = None,
) -> None:
    """Make this gateway's key (EC P-256, never sent) and a CSR with CN = TELEMETRY_EDGE_GATEWAY_ID,
    have it signed with a one-time token, and install the certificate at
    TELEMETRY_EDGE_MQTT__CERT_FILE (the key at __KEY_FILE, 0600; the CA at __CA_FILE if missing)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        done = enroll_mod.enroll(
            url,
            token,
            settings.gateway_id,
            settings.mqtt.cert_file,
            settings.mqtt.key_file,
            ca_file=ca_file,
            mqtt_ca_file=settings.mqtt.ca_file,
        )
    except (enroll_mod.EnrollError, OSError) as exc:
        typer.echo(f"edge-agent: enrollment failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"enrolled {settings.gateway_id}: certificate {done.cert_file} (serial {done.serial:#x}, "
        f"valid until {done.not_after}), key {done.key_file}"
    )


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
        if enroll_mod.finish_install(settings.mqtt.cert_file, settings.mqtt.key_file):
            log.warning("completed a certificate install a stop had interrupted")
        gateway = GatewayState(
            outbox, settings.mqtt.cert_file, interval_s=settings.state_interval_s
        )
        async with mqtt_client(settings, gateway=gateway) as client:
            agent = EdgeAgent(settings, outbox, client, pace=pace, gateway=gateway)
            renewal = Renewal(settings, client, gateway) if settings.enrollment_url else None
            if settings.metrics_port:
                registry = metrics.registry_for(
                    outbox,
                    agent.counters,
                    client,
                    cert_not_after=lambda: gateway.not_after,
                    clock=agent.clock,
                    renewal=renewal.stats if renewal is not None else None,
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
            renewing = None
            if renewal is not None:
                renewing = asyncio.create_task(renewal.run(), name="renewal")
            try:
                await agent.run(captures)
            finally:
                if renewing is not None:
                    renewing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewing
                await agent.say_offline()
                log.info("edge agent stopping: %s", dataclasses.asdict(agent.counters))


def main() -> None:
    app()
