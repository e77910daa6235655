"""``edge-agent``: run the agent, or inspect and manage its outbox."""

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

import orjson
import typer
from pydantic import ValidationError

from edge_agent.agent import EdgeAgent, mqtt_client
from edge_agent.capture import Capture
from edge_agent.jsonl import read_jsonl
from edge_agent.outbox import Outbox
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Simulator, run_simulator
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging

log = logging.getLogger("edge_agent")

app = typer.Typer(help="Charger gateway agent: capture, store durably, publish over MQTT 5/TLS.")
outbox_app = typer.Typer(help="Inspect and manage the local outbox.")
app.add_typer(outbox_app, name="outbox")

OutboxPath = Annotated[
    Path,
    typer.Option("--path", envvar="TELEMETRY_EDGE_OUTBOX_PATH", help="The outbox file."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


class SourceName(StrEnum):
    sim = "sim"
    jsonl = "jsonl"


def _settings() -> EdgeSettings:
    try:
        return EdgeSettings()  # gateway_id comes from the environment
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = "TELEMETRY_EDGE_" + "__".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"edge-agent: {name}: {err['msg']}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(
    source: Annotated[SourceName, typer.Option(help="Where readings come from.")] = SourceName.sim,
    file: Annotated[
        Path | None, typer.Option(help="jsonl: read this file instead of stdin.")
    ] = None,
) -> None:
    """Run the agent until SIGTERM / Ctrl-C (or, for a finite jsonl input, until all is sent)."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_run(settings, source, file))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # SIGINT / SIGTERM: the agent already flushed and disconnected
    except ConfigError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(2) from exc


async def _run(settings: EdgeSettings, source: SourceName, file: Path | None) -> None:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    with contextlib.ExitStack() as stack:
        outbox = stack.enter_context(Outbox(settings.outbox_path))
        captures: AsyncIterator[list[Capture]]
        if source is SourceName.sim:
            sim = Simulator(settings.gateway_id, settings.sim.chargers, seed=settings.sim.seed)
            captures = run_simulator(sim, settings.sim.interval_s)
        else:
            stream = stack.enter_context(file.open("rb")) if file else sys.stdin.buffer
            captures = read_jsonl(stream)
        async with mqtt_client(settings) as client:
            agent = EdgeAgent(settings, outbox, client)
            log.info(
                "edge agent %s started (source %s, outbox %s)",
                settings.gateway_id,
                source.value,
                settings.outbox_path,
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    publisher = tg.create_task(agent.publish_forever(), name="publish")
                    await agent.capture(captures)
                    # A finite source ended: send what is left, then stop.
                    publisher.cancel()
                    await agent.drain()
            finally:
                await agent.say_offline()
                log.info("edge agent stopping: %s", dataclasses.asdict(agent.counters))


@outbox_app.command()
def stats(path: OutboxPath = Path("edge-outbox.sqlite3"), json: JsonFlag = False) -> None:
    """How much is waiting, how old it is, what was parked."""
    _require(path)
    with Outbox(path) as box:
        st = dataclasses.asdict(box.stats())
    if json:
        typer.echo(orjson.dumps(st).decode())
    else:
        for k, v in st.items():
            typer.echo(f"{k:18} {v}")


@outbox_app.command()
def peek(
    path: OutboxPath = Path("edge-outbox.sqlite3"),
    n: Annotated[int, typer.Option("-n", min=1, help="How many, oldest first.")] = 10,
    json: JsonFlag = False,
) -> None:
    """Show the oldest pending readings without removing them."""
    _require(path)
    with Outbox(path) as box:
        rows = box.oldest(n, 1 << 30)
    for row in rows:
        typer.echo(row.reading_json().decode() if json else f"{row.seq:>10}  {row.body.decode()}")


@outbox_app.command()
def drain() -> None:
    """Connect with the agent's settings and publish everything pending, showing progress."""
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_drain(settings))


async def _drain(settings: EdgeSettings) -> None:
    with Outbox(settings.outbox_path) as box:
        total = box.stats().pending
        async with mqtt_client(settings) as client:
            agent = EdgeAgent(settings, box, client)
            done = 0
            while True:
                await client.wait_connected()
                sent = await agent.publish_batch()
                if sent == 0:
                    break
                done += sent
                typer.echo(f"drained {done}/{total}", err=True)
    typer.echo(f"outbox empty ({done} published)", err=True)


@outbox_app.command()
def purge(
    path: OutboxPath = Path("edge-outbox.sqlite3"),
    yes: Annotated[bool, typer.Option("--yes", help="Really delete unsent readings.")] = False,
) -> None:
    """Delete every pending reading (they are lost). Needs --yes."""
    _require(path)
    if not yes:
        typer.echo("edge-agent: purge deletes unsent readings for good; add --yes", err=True)
        raise typer.Exit(2)
    with Outbox(path) as box:
        typer.echo(f"purged {box.purge()} readings")


def _require(path: Path) -> None:
    if not path.exists():
        typer.echo(f"edge-agent: no outbox at {path}", err=True)
        raise typer.Exit(1)


def main() -> None:
    app()
