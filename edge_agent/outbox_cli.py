"""``edge-agent outbox stats|peek|drain|purge``: inspect and manage the outbox.

Every subcommand takes ``--json`` (machine-readable on stdout). ``drain`` needs the agent's
settings (MQTT, gateway id) and refuses to run while the agent holds the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edge_agent.agent import mqtt_client, route
from edge_agent.budget import Budget
from edge_agent.lock import OutboxBusyError, exclusive
from edge_agent.outbox import Outbox, OutboxStats
from edge_agent.publisher import Counters, Publisher
from edge_agent.settings import EdgeSettings, load_edge_settings
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors

outbox_app = typer.Typer(help="Inspect and manage the local outbox.")

OutboxPath = Annotated[
    Path | None,
    typer.Option(
        "--path",
        envvar=env_name(EdgeSettings, "outbox_path"),
        help="The outbox file [default: the configured one (edge.env), else edge-outbox.sqlite3].",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_PATH = Path("edge-outbox.sqlite3")


def load_settings() -> EdgeSettings:
    try:
        return load_edge_settings()  # gateway_id comes from the environment or edge.env
    except ConfigError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ValidationError as exc:
        for line in settings_errors(EdgeSettings, exc):
            typer.echo(f"edge-agent: {line}", err=True)
        raise typer.Exit(2) from exc


def _budget() -> Budget:
    """The configured budget if the environment has the agent's settings, else the default."""
    try:
        return load_edge_settings().outbox.budget()
    except (ConfigError, ValidationError):
        return Budget()


def _configured_path() -> Path:
    """The agent's configured outbox (its configuration file's, on an installed gateway) if the
    settings are complete, else the default file name."""
    try:
        return load_edge_settings().outbox_path
    except (ConfigError, ValidationError):
        return DEFAULT_PATH


def _open(given: Path | None) -> Outbox:
    path = given if given is not None else _configured_path()
    if not path.exists():
        typer.echo(f"edge-agent: no outbox at {path}", err=True)
        raise typer.Exit(1)
    return Outbox(path, _budget())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _run(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def _dropped_seqs(st: OutboxStats) -> str:
    if st.newest_dropped is None and not st.dropped_unlisted:
        return "none"
    parts = []
    if st.newest_dropped is not None:
        parts.append(f"{st.dropped_runs} runs, newest {_run(*st.newest_dropped)}")
    if st.dropped_unlisted:
        parts.append(f"{st.dropped_unlisted} older readings not listed")
    return "; ".join(parts) + " (outbox dropped)"


def render_stats(st: OutboxStats) -> str:
    dropped = ", ".join(f"{k} {v}" for k, v in st.dropped.items() if v) or "none"
    if st.dropped_in_flight:
        dropped += f" (+{st.dropped_in_flight} in flight: counted if their batch fails)"
    rows = [
        ("pending", f"{st.pending} of {st.max_rows} ({_size(st.pending_bytes)} of "),
        ("oldest unsent", _age(st.oldest_age_s)),
        ("seq", f"{st.oldest_seq}..{st.newest_seq} (last assigned {st.last_seq_assigned})"),
        ("parked", str(st.parked)),
        ("dropped", dropped),
        ("dropped seqs", _dropped_seqs(st)),
        ("file", _size(st.file_bytes) + (" (DISK FULL: capped)" if st.disk_full else "")),
    ]
    rows[0] = ("pending", rows[0][1] + f"{_size(st.max_bytes)})")
    return "\n".join(f"{k:14} {v}" for k, v in rows)


@outbox_app.command()
def stats(path: OutboxPath = None, json: JsonFlag = False) -> None:
    """Depth, bytes, oldest unsent age, parked and dropped (by reason)."""
    with _open(path) as box:
        st = box.stats()
    typer.echo(orjson.dumps(dataclasses.asdict(st)).decode() if json else render_stats(st))


@outbox_app.command()
def peek(
    path: OutboxPath = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many, oldest first.")] = 10,
    parked: Annotated[bool, typer.Option("--parked", help="Show parked readings.")] = False,
    json: JsonFlag = False,
) -> None:
    """Show the oldest pending (or parked) readings without removing them; --json: JSON lines."""
    with _open(path) as box:
        if parked:
            for seq, reason, body in box.parked_rows(n):
                if json:
                    reading = orjson.loads(body)
                    doc = {"seq": seq, "reason": reason, "reading": reading}
                    typer.echo(orjson.dumps(doc).decode())
                else:
                    typer.echo(f"{seq:>10}  [{reason}]  {body.decode()}")
            return
        for row in box.oldest(n, 1 << 30):
            line = row.reading_json().decode() if json else f"{row.seq:>10}  {row.body.decode()}"
            typer.echo(line)


@outbox_app.command()
def dropped(
    path: OutboxPath = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many runs, newest first.")] = 20,
    json: JsonFlag = False,
) -> None:
    """Which seqs were dropped without a PUBACK (budget, disk full, parked overflow, purge), as
    runs of consecutive seqs, newest first; --json: JSON lines {"first_seq", "last_seq"}."""
    with _open(path) as box:
        runs = box.dropped_runs(n)
        st = box.stats()
    for first, last in runs:
        doc = {"first_seq": first, "last_seq": last}
        typer.echo(orjson.dumps(doc).decode() if json else _run(first, last))
    if not json and st.dropped_unlisted:
        typer.echo(f"({st.dropped_unlisted} older dropped readings are no longer listed)")


@outbox_app.command()
def purge(
    path: OutboxPath = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete unsent readings.")] = False,
    json: JsonFlag = False,
) -> None:
    """Delete every pending reading (they are lost; counted as dropped 'purged'). Needs --yes."""
    if not yes:
        typer.echo("edge-agent: purge deletes unsent readings for good; add --yes", err=True)
        raise typer.Exit(2)
    with _open(path) as box:
        n = box.purge()
    typer.echo(orjson.dumps({"purged": n}).decode() if json else f"purged {n} readings")


@outbox_app.command()
def drain(
    json: JsonFlag = False,
    rate: Annotated[float, typer.Option(min=0, help="Readings/s (0: unlimited).")] = 0.0,
    timeout: Annotated[float, typer.Option(min=0, help="Give up after S seconds (0: never).")] = 0,
) -> None:
    """Connect with the agent's settings and publish everything pending, showing progress
    (count, rate, ETA). Refused while the agent runs on the same outbox."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        result = asyncio.run(_drain(settings, rate, timeout))
    except OutboxBusyError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    if json:
        typer.echo(orjson.dumps(result).decode())
    else:
        typer.echo(
            f"{'outbox empty' if result['pending'] == 0 else 'gave up'}: "
            f"{result['published']} published, {result['parked']} parked in "
            f"{result['seconds']:.1f} s ({result['rate']:.0f} readings/s)",
            err=True,
        )
    if result["pending"]:
        raise typer.Exit(1)


async def _drain(settings: EdgeSettings, rate: float, give_up_s: float) -> dict[str, Any]:
    with exclusive(settings.outbox_path), Outbox(settings.outbox_path) as box:
        total = box.pending()
        counters = Counters()
        started = time.monotonic()
        async with mqtt_client(settings, commands=False) as client:
            publisher = Publisher(settings, box, client, counters, drain_rate=rate)
            stop = asyncio.Event()
            stop.set()
            task = asyncio.create_task(publisher.run(stop))
            inbox = asyncio.create_task(route(settings, client, publisher, None))
            try:
                async with asyncio.timeout(give_up_s or None):
                    await _show_progress(task, counters, total)
            except TimeoutError:
                task.cancel()
            finally:
                inbox.cancel()
        seconds = time.monotonic() - started
        done = counters.published + counters.parked
        return {
            "published": counters.published,
            "parked": counters.parked,
            "pending": box.pending(),
            "seconds": round(seconds, 3),
            "rate": round(done / seconds, 1) if seconds else 0.0,
        }


async def _show_progress(task: asyncio.Task[None], counters: Counters, total: int) -> None:
    """Rich progress bar on a terminal, a line every 2 s otherwise (stderr either way)."""
    if sys.stderr.isatty():
        columns = (
            TextColumn("draining"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f} readings/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as bar:
            job = bar.add_task("drain", total=total, rate=0.0)
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                done = counters.published + counters.parked
                bar.update(job, completed=done, rate=bar.tasks[0].speed or 0.0)
        await task
        return
    started = time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=2.0)
        done = counters.published + counters.parked
        elapsed = time.monotonic() - started
        speed = done / elapsed if elapsed else 0.0
        eta = f"{(total - done) / speed:.0f} s" if speed and total > done else "-"
        print(f"drained {done}/{total} ({speed:.0f} readings/s, ETA {eta})", file=sys.stderr)
    await task
