"""Many real edge agents in one process, run by ``bench.fleet_soak``: each gateway is the edge
agent's own code (:class:`edge_agent.agent.EdgeAgent` with its :class:`edge_agent.outbox.Outbox`
in SQLite and its :class:`edge_agent.publisher.Publisher`, one MQTT 5 session over TLS with its
own certificate from :func:`edge_agent.agent.mqtt_client`), fed by the edge's simulator
(:class:`edge_agent.simulator.Simulator`, one reading per charger every ``--interval`` s).

So a gateway forgets a reading only when a bridge's stored acknowledgement covers it, and sends
again what the cloud did not confirm in ``STORED_TIMEOUT_S`` or across a reconnect, exactly as a
deployed gateway does; nothing of the outbox or the publisher is reimplemented here. What this
module adds is measurement: the wall time each seq was captured (a thin :class:`Outbox`
subclass) and the time the stored acknowledgement covering it arrived (a wrapper around the
publisher's ``confirm``), and the first/last seq each gateway captured, for the loss check.

The gateways connect at once and start capturing once ``--go-file`` exists (the soak writes it
when all are connected), their first samples spread evenly over the interval. Every 10 s a
status file (``--status``) tells the soak what was captured and confirmed so far, and a line
appended to ``--delays`` holds the delays (ms) confirmed since the line before.

File descriptors: paho's network loop uses ``select()``, which cannot watch a descriptor above
1023, and each gateway holds about six (its TLS socket, paho's wake-up socket pair, the SQLite
outbox with its WAL and shared memory): past ~150 gateways in one process the later ones never
connect (the broker logs "Protocol error" for each attempt). The soak keeps to 125 a process.

Once ``--stop-file`` exists the simulators stop and every agent sends what is left and returns
once its outbox is empty (everything confirmed stored), or after ``--drain-seconds``; then the
records go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.agent import EdgeAgent, mqtt_client
from edge_agent.capture import Capture
from edge_agent.outbox import Outbox
from edge_agent.series import Marks
from edge_agent.settings import EdgeSettings
from edge_agent.simulator import Simulator
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.settings import MqttSettings
from telemetry_common.stored_ack import decode as parse_ack
from telemetry_common.stored_ack import to_ranges
from telemetry_common.topics import DEFAULT_ROOT

STATUS_EVERY_S = 10.0


class TimedOutbox(Outbox):
    """The edge's outbox, noting the wall time each seq was captured (for the delay to its
    stored acknowledgement) and the first and last seq handed out."""

    def __init__(self, path: Path, born: dict[int, float]) -> None:
        super().__init__(path)
        self.born = born
        self.first_seq = 0
        self.last_captured = 0
        self.captured = 0

    def append(self, bodies: Iterable[bytes], marks: Marks | None = None) -> list[int]:
        seqs = super().append(bodies, marks)
        now = time.time()
        for seq in seqs:
            self.born[seq] = now
        if seqs:
            self.first_seq = self.first_seq or seqs[0]
            self.last_captured = seqs[-1]
            self.captured += len(seqs)
        return seqs


@dataclass
class Gw:
    """One gateway's agent and what it saw."""

    name: str
    settings: EdgeSettings
    offset_s: float
    born: dict[int, float] = field(default_factory=dict)
    outbox: TimedOutbox | None = None
    agent: EdgeAgent | None = None
    client: AsyncMqttClient | None = None
    done: bool = False


@dataclass
class Delays:
    """Capture-to-stored-acknowledgement delays (ms) and the capture time of each (s)."""

    captured_at: list[float] = field(default_factory=list)
    delay_ms: list[int] = field(default_factory=list)
    reported: int = 0  # how many went into status files already


def settings_for(a: argparse.Namespace, name: str) -> EdgeSettings:
    pki = Path(a.pki_dir)
    mqtt = MqttSettings(
        host=a.host,
        port=a.port,
        ca_file=pki / "ca.crt",
        cert_file=pki / f"{name}.crt",
        key_file=pki / f"{name}.key",
    )
    return EdgeSettings(
        gateway_id=name,
        outbox_path=Path(a.outbox_dir) / f"{name}.sqlite3",
        mqtt=mqtt,
        topic_root=a.topic_root,
        sim={"chargers": a.chargers, "interval_s": a.interval},
    )


@dataclass
class Start:
    """When capturing starts: once ``go`` is set, at loop time ``t0``."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    t0: float = 0.0


async def samples(
    gw: Gw, interval: float, stop: asyncio.Event, start: Start
) -> AsyncIterator[list[Capture]]:
    """The simulator's captures every ``interval`` s (first at ``t0 + offset``) until ``stop``."""
    sim = Simulator(gw.name, gw.settings.sim.chargers, seed=zlib.crc32(gw.name.encode()))
    loop = asyncio.get_running_loop()
    await start.go.wait()
    due = start.t0 + gw.offset_s
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - loop.time())):
                await stop.wait()
        if stop.is_set():
            return
        yield sim.sample(datetime.now(UTC), interval)
        due += interval


async def run_gateway(
    gw: Gw, a: argparse.Namespace, stop: asyncio.Event, start: Start, delays: Delays
) -> None:
    outbox = TimedOutbox(gw.settings.outbox_path, gw.born)
    gw.outbox = outbox
    try:
        async with mqtt_client(gw.settings, commands=False) as client:
            gw.client = client
            agent = EdgeAgent(gw.settings, outbox, client)
            gw.agent = agent
            confirm = agent.publisher.confirm

            async def timed_confirm(payload: bytes) -> None:
                now = time.time()
                with contextlib.suppress(ValueError):
                    _, ranges = parse_ack(payload)
                    born = gw.born
                    for first, last in ranges:
                        if last - first + 1 <= len(born):
                            seqs: Iterable[int] = range(first, last + 1)
                        else:
                            seqs = [q for q in born if first <= q <= last]
                        for seq in seqs:
                            t = born.pop(seq, None)
                            if t is not None:
                                delays.captured_at.append(t)
                                delays.delay_ms.append(round((now - t) * 1000))
                await confirm(payload)

            agent.publisher.confirm = timed_confirm  # type: ignore[method-assign]
            await agent.run(samples(gw, a.interval, stop, start))
    finally:
        gw.done = True


def status(gws: list[Gw], delays: Delays, t_start: float) -> dict[str, Any]:
    agents = [g.agent for g in gws if g.agent is not None]
    return {
        "t": time.time(),
        "up_s": time.monotonic() - t_start,
        "captured": sum(g.outbox.captured for g in gws if g.outbox is not None),
        "confirmed": sum(ag.counters.confirmed for ag in agents),
        "unconfirmed": sum(ag.publisher.unconfirmed for ag in agents),
        "stored_timeouts": sum(ag.counters.stored_timeouts for ag in agents),
        "stored_holes": sum(ag.counters.stored_holes for ag in agents),
        "batches": sum(ag.counters.batches for ag in agents),
        "connected": sum(1 for g in gws if g.client is not None and g.client.connected),
        "done": sum(1 for g in gws if g.done),
        "delays_recorded": len(delays.delay_ms),
    }


def append_delays(path: Path, delays: Delays) -> None:
    """The delays recorded since the last call, as one JSON line (the soak reads the file on)."""
    new = delays.delay_ms[delays.reported :]
    delays.reported += len(new)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(new) + "\n")


def seqs_in(outbox: Outbox) -> list[int]:
    """The seqs of the rows an outbox still holds (read-only, after the agent stopped)."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox.path}?mode=ro", uri=True)) as db:
        return [int(seq) for (seq,) in db.execute("SELECT seq FROM outbox")]


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    names = [f"{a.prefix}{a.first + k:05d}" for k in range(a.count)]
    n_all = a.total
    gws = [
        Gw(name, settings_for(a, name), a.interval * ((a.first + k) / n_all))
        for k, name in enumerate(names)
    ]
    stop = asyncio.Event()
    delays = Delays()
    loop = asyncio.get_running_loop()
    t_start = time.monotonic()
    start = Start()
    tasks = [asyncio.create_task(run_gateway(g, a, stop, start, delays), name=g.name) for g in gws]
    stop_file, status_file, delays_file = a.stop_file, Path(a.status), Path(a.delays)
    deadline = t_start + a.max_seconds
    next_status = 0.0
    stopped_at: float | None = None
    while True:
        await asyncio.sleep(0.2)
        now = time.monotonic()
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise RuntimeError(f"gateway {failed[0].get_name()} failed") from failed[0].exception()
        if not start.go.is_set() and await asyncio.to_thread(os.path.exists, a.go_file):
            start.t0 = loop.time() + 0.5
            start.go.set()
        if stopped_at is None and (
            now > deadline or await asyncio.to_thread(os.path.exists, stop_file)
        ):
            stop.set()
            stopped_at = now
        if now >= next_status:
            next_status = now + STATUS_EVERY_S
            append_delays(delays_file, delays)
            write_json(status_file, status(gws, delays, t_start))
        if stopped_at is not None and (
            all(t.done() for t in tasks) or now - stopped_at > a.drain_seconds
        ):
            break
    drained = all(t.done() for t in tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    final = status(gws, delays, t_start)
    write_json(status_file, final)
    per_gw = {}
    for g in gws:
        ob = g.outbox
        if ob is None:
            continue
        per_gw[g.name] = {
            "first_seq": ob.first_seq,
            "last_seq": ob.last_captured,
            "captured": ob.captured,
            "pending": ob.pending(),
            # The seqs still in the outbox (not confirmed stored: not forgotten, not lost).
            "pending_ranges": to_ranges(seqs_in(ob)),
            "epoch": ob.epoch,
            "stored_timeouts": g.agent.counters.stored_timeouts if g.agent else None,
        }
        ob.close()
    return {
        "gateways": len(gws),
        "drained": drained,
        "drain_seconds": (time.monotonic() - stopped_at) if stopped_at else None,
        "captured": final["captured"],
        "confirmed": final["confirmed"],
        "stored_timeouts": final["stored_timeouts"],
        "stored_holes": final["stored_holes"],
        "per_gateway": per_gw,
        "captured_at": delays.captured_at,
        "delay_ms": delays.delay_ms,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_edges", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="the broker's gateway listener")
    p.add_argument("--pki-dir", required=True, help="ca.crt and NAME.crt/NAME.key per gateway")
    p.add_argument("--prefix", default="soak-gw-", help="gateway id = PREFIX + 5-digit index")
    p.add_argument("--first", type=int, default=0, help="index of this process's first gateway")
    p.add_argument("--count", type=int, required=True, help="gateways in this process")
    p.add_argument("--total", type=int, required=True, help="gateways in the whole fleet")
    p.add_argument("--chargers", type=int, default=10, help="chargers per gateway")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    p.add_argument("--topic-root", default=DEFAULT_ROOT)
    p.add_argument("--outbox-dir", required=True)
    p.add_argument("--status", required=True, help="status JSON, rewritten every 10 s")
    p.add_argument("--delays", required=True, help="new delays (ms), a JSON line every 10 s")
    p.add_argument("--go-file", required=True, help="start capturing once this file exists")
    p.add_argument("--stop-file", required=True, help="stop capturing once this file exists")
    p.add_argument("--drain-seconds", type=float, default=300.0)
    p.add_argument("--max-seconds", type=float, default=7200.0, help="bound on capturing")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    Path(a.outbox_dir).mkdir(parents=True, exist_ok=True)
    result = asyncio.run(main_async(a))
    write_json(Path(a.out), result)


if __name__ == "__main__":
    main()
