"""Sessions job cost benchmark: CPU of the job and of InfluxDB per pass
(docs/deploy.md#sessions).

``.venv/bin/python -m bench.sessions_cost [--chargers C] [--every S] [--hours H] [--passes N]``

Starts its own InfluxDB 1.x; writes H hours of readings of C chargers, one every S seconds each
(sessions of 40 minutes with 10 idle minutes between them, staggered per charger), as the bridge
writes them (``processor.lineproto``); then runs the job in this process with a clock of its own:
its first pass (the LOOKBACK listed, every session computed whole), then N steady passes, each
after 30 s more readings were written (the last of 20 is a ``LOOKBACK_EVERY`` sweep). Prints the
job's CPU (this process) and InfluxDB's (``/proc``) per pass. A script, not a test; the
InfluxDB it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from processor.lineproto import to_lines, ts_ns_all
from sessions.job import SessionJob
from sessions.settings import SessionsInfluxSettings, SessionsSettings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer
from telemetry_common.schema import Reading
from telemetry_stack.servers import free_port, start_influxd

PASS_S = 30.0
SESSION_S, CYCLE_S = 2400, 3000


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _readings(
    chargers: int, every: float, start: datetime, end: datetime, seq0: int
) -> list[Reading]:
    out = []
    for c in range(chargers):
        t, seq = start, seq0
        while t < end:
            at = int(t.timestamp()) + c * 37
            tx = f"tx-{c}-{at // CYCLE_S}" if at % CYCLE_S < SESSION_S else None
            out.append(
                Reading(
                    charger_id=f"cp{c:05d}", evse_id=1, connector_id=1, seq=seq, ts=t,
                    status="Charging" if tx else "Available", transaction_id=tx,
                    values={"energy_wh": float(at % 10**7) if tx else 0.0,
                            "power_w": 7000.0 if tx else 0.0},
                )
            )  # fmt: skip
            seq += 1
            t += timedelta(seconds=every)
    return out


def _write(url: str, readings: list[Reading]) -> None:
    rows = [r.model_dump() for r in readings]
    lines = to_lines("gw-1", rows, ts_ns_all(rows))
    with httpx.Client(base_url=url, timeout=120) as http:
        for i in range(0, len(lines), 5000):
            r = http.post(
                "/write", params={"db": "telemetry"}, content="\n".join(lines[i : i + 5000])
            )
            r.raise_for_status()


async def _run(args: argparse.Namespace, url: str, influxd_pid: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _write(url, _readings(args.chargers, args.every, now - timedelta(hours=args.hours), now, 1))
    clock = [now]
    settings = SessionsSettings(influx=SessionsInfluxSettings(url=url), http_port=0)
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        job = SessionJob(settings, client, writer, now=lambda: clock[0])
        cpu, influx = time.process_time(), _cpu(influxd_pid)
        result = await job.run_pass()
        print(
            f"first pass: {result.computed} sessions computed, written {result.written}: "
            f"job {time.process_time() - cpu:.2f} s, InfluxDB {_cpu(influxd_pid) - influx:.2f} s"
        )
        for k in range(args.passes):
            end = clock[0] + timedelta(seconds=PASS_S)
            _write(url, _readings(args.chargers, args.every, clock[0], end, 10**6 + k * 10**3))
            clock[0] = end
            cpu, influx = time.process_time(), _cpu(influxd_pid)
            result = await job.run_pass()
            print(
                f"pass {k + 1}: {result.computed} computed: job "
                f"{(time.process_time() - cpu) * 1000:.0f} ms, InfluxDB "
                f"{(_cpu(influxd_pid) - influx) * 1000:.0f} ms"
            )


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.sessions_cost", description=__doc__)
    p.add_argument("--chargers", type=int, default=200)
    p.add_argument("--every", type=float, default=10.0, help="seconds between a charger's readings")
    p.add_argument("--hours", type=float, default=2.0, help="history written before the first pass")
    p.add_argument("--passes", type=int, default=20)
    args = p.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    port = free_port()
    influxd = start_influxd(state, port)
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(f"{url}/query", data={"q": 'CREATE DATABASE "telemetry"'}).raise_for_status()
        keep = 'CREATE RETENTION POLICY "keep" ON "telemetry" DURATION INF REPLICATION 1'
        httpx.post(f"{url}/query", data={"q": keep}).raise_for_status()
        assert influxd.pid is not None
        asyncio.run(_run(args, url, influxd.pid))
    finally:
        influxd.stop()


if __name__ == "__main__":
    main()
