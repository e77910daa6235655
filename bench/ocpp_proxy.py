"""OCPP proxy benchmark: what relaying through the gateway adds to each forwarded frame.

``.venv/bin/python -m bench.ocpp_proxy [--chargers 200] [--interval 10] [--seconds 60] [--keep]``

In a temporary directory, with a dev PKI and its own Mosquitto on free loopback ports:

- a CSMS: the ``ocpp`` library's v16 ChargePoint in the central-system role behind
  ``websockets.serve`` (in this process);
- ``--chargers`` chargers: the library's v16 ChargePoint (in this process), each starting a
  transaction and then sending MeterValues (10 sampled values) every ``--interval`` seconds,
  spread evenly;
- the gateway: the real ``edge-agent run --source ocpp`` with ``MODE=proxy`` (its own process;
  its outbox publishes to Mosquitto over TLS), between them.

Every frame is timestamped (``time.perf_counter``, one clock: both peers are in this process)
when one peer sends it and when the other receives it. The same load runs twice, first with the
chargers connected to the CSMS directly, then through the gateway; the *added latency* is the
gateway run's percentile minus the direct run's, per direction (charger -> CSMS: the
MeterValues, tapped and stored in the outbox before it is forwarded; CSMS -> charger: the
answer). Also: the gateway's RSS (VmRSS at the end, VmHWM peak) and its CPU per forwarded frame
over the measured window. A script, not a test; every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench.harness import cli
from bench.harness.procstat import cpu_seconds, proc_status_kb
from bench.harness.report import Row, percentile, print_table, verdict
from bench.harness.stack import (
    BIN,
    TOPIC_ROOT,
    Stack,
    listening,
    running_stack,
    unique_ports,
    wait_for,
)
from edge_agent.ocpp.lib import ChargePoint, call, call_result, on
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for

GATEWAY: Final = "bench-ocpp-gw"
OCPP16: Final = [Subprotocol("ocpp1.6")]
TARGET_ADDED_P99_MS: Final = 20.0
TARGET_RSS_MB: Final = 120.0

#: (charger id, unique id) -> perf_counter at send / at receive, per direction.
Stamps = dict[tuple[str, str], float]


class Clock:
    def __init__(self) -> None:
        self.req_sent: Stamps = {}
        self.req_recv: Stamps = {}
        self.ans_sent: Stamps = {}
        self.ans_recv: Stamps = {}
        self.measuring = False


class Stamped:
    """A connection that stamps each MeterValues CALL and its CALLRESULT on the way."""

    def __init__(self, ws: Any, charger_id: str, clock: Clock) -> None:
        self.ws, self.charger_id, self.clock = ws, charger_id, clock

    def _stamp(self, frame: str | bytes, sent: bool) -> None:
        if not self.clock.measuring:
            return
        now = time.perf_counter()
        msg = orjson.loads(frame)
        key = (self.charger_id, msg[1])
        c = self.clock
        if msg[0] == 2 and msg[2] == "MeterValues":
            (c.req_sent if sent else c.req_recv)[key] = now
        elif msg[0] == 3:
            (c.ans_sent if sent else c.ans_recv)[key] = now

    async def recv(self) -> str | bytes:
        frame = await self.ws.recv()
        self._stamp(frame, sent=False)
        return frame  # type: ignore[no-any-return]

    async def send(self, frame: str) -> None:
        self._stamp(frame, sent=True)
        await self.ws.send(frame)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Csms(ChargePoint):
    tids = iter(range(1, 1 << 30))

    @on("StartTransaction")
    async def start_transaction(self, **_: Any) -> object:
        return call_result.StartTransaction(
            transaction_id=next(self.tids), id_tag_info={"status": "Accepted"}
        )

    @on("MeterValues", skip_schema_validation=True)
    async def meter_values(self, **_: Any) -> object:
        return call_result.MeterValues()


@contextlib.asynccontextmanager
async def csms(port: int, clock: Clock) -> AsyncIterator[None]:
    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        with contextlib.suppress(ConnectionClosed):
            await Csms(charger_id, Stamped(ws, charger_id, clock)).start()

    async with serve(handler, "127.0.0.1", port, subprotocols=OCPP16, max_size=2**20):
        yield


def samples(wh: int) -> list[dict[str, Any]]:
    out = [
        {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "11000", "measurand": "Power.Active.Import", "unit": "W"},
    ]
    for p in ("L1", "L2", "L3"):
        out.append({"value": "16.0", "measurand": "Current.Import", "unit": "A", "phase": p})
        out.append({"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": f"{p}-N"})
    out.append({"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"})
    out.append({"value": "50.0", "measurand": "Frequency"})
    return [{"timestamp": _now(), "sampledValue": out}]


async def charger(
    port: int, charger_id: str, clock: Clock, offset: float, interval: float, stop_at: float
) -> int:
    """One charger: connect, start a transaction, MeterValues every ``interval`` s."""
    sent = 0
    url = f"ws://127.0.0.1:{port}/ocpp/{charger_id}"
    async with connect(url, subprotocols=OCPP16, open_timeout=60) as ws:
        cp = ChargePoint(charger_id, Stamped(ws, charger_id, clock), 60)
        task = asyncio.create_task(cp.start())
        try:
            start = await cp.call(call.StartTransaction(1, "BENCHTAG", 0, _now()))
            tid = start.transaction_id
            await asyncio.sleep(offset)
            wh = 0
            while time.monotonic() < stop_at:
                t = time.monotonic()
                wh += 30
                mv = call.MeterValues(1, samples(wh), transaction_id=tid)
                await cp.call(mv, skip_schema_validation=True)
                sent += 1
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - t)))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return sent


def latencies_ms(sent: Stamps, received: Stamps) -> list[float]:
    return sorted(1000 * (received[k] - t) for k, t in sent.items() if k in received)


async def load(a: argparse.Namespace, port: int, clock: Clock, on_window: Any) -> dict[str, Any]:
    """Chargers on ``port``: connect, warm up one interval, then measure ``a.seconds``."""
    warm = a.interval
    t0 = time.monotonic()
    stop_at = t0 + warm + a.seconds
    tasks = [
        asyncio.create_task(
            charger(port, f"CP-{i:04d}", clock, a.interval * i / a.chargers, a.interval, stop_at)
        )
        for i in range(a.chargers)
    ]
    await asyncio.sleep(warm)
    clock.measuring = True
    start = on_window()
    await asyncio.sleep(a.seconds)
    clock.measuring = False
    end = on_window()
    sent = sum(await asyncio.gather(*tasks))
    req = latencies_ms(clock.req_sent, clock.req_recv)
    ans = latencies_ms(clock.ans_sent, clock.ans_recv)
    return {
        "meter_values_sent": sent,
        "measured": len(req),
        "request_ms": {"p50": percentile(req, 50), "p99": percentile(req, 99)},
        "answer_ms": {"p50": percentile(ans, 50), "p99": percentile(ans, 99)},
        "window": (start, end),
        "answered_in_window": len(ans),
    }


def gateway_env(stack: Stack, work: Path, port: int, csms_port: int) -> dict[str, str]:
    return env_for(
        EdgeSettings,
        gateway_id=GATEWAY,
        topic_root=TOPIC_ROOT,
        mqtt=stack.mqtt_settings(GATEWAY),
        outbox_path=work / "outbox.sqlite3",
        log_format="json",
        log_level="WARNING",
        ocpp={
            "port": port,
            "mode": "proxy",
            "upstream_url": f"ws://127.0.0.1:{csms_port}/ocpp/{{charger_id}}",
            "state_path": work / "ocpp-state.json",
            "id_tag_salt": "bench-salt-0123456789",
            "max_chargers": 10_000,
        },
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(a: argparse.Namespace) -> dict[str, Any]:
    with (
        cli.workdir("bench-ocpp-proxy-", a.keep) as work,
        running_stack(work, [GATEWAY], influxd=False) as stack,
    ):
        gw_port, csms_port = unique_ports(2)
        fig: dict[str, Any] = {"chargers": a.chargers, "interval_s": a.interval}
        fig["loadavg_before"] = loadavg()

        async def direct() -> dict[str, Any]:
            clock = Clock()
            async with csms(csms_port, clock):
                return await load(a, csms_port, clock, lambda: None)

        cli.log(f"direct: {a.chargers} chargers -> CSMS for {a.interval + a.seconds:.0f} s")
        fig["direct"] = asyncio.run(direct())

        gw = stack.start("edge-agent", [str(BIN / "edge-agent"), "run", "--source", "ocpp"],
                         gateway_env(stack, work, gw_port, csms_port))  # fmt: skip
        wait_for("the gateway's OCPP port", lambda: listening(gw_port), 30)

        def cpu() -> float | None:
            return cpu_seconds(gw.pid)

        async def proxied() -> dict[str, Any]:
            clock = Clock()
            async with csms(csms_port, clock):
                return await load(a, gw_port, clock, cpu)

        cli.log(f"proxy: {a.chargers} chargers -> gateway -> CSMS")
        fig["proxy"] = asyncio.run(proxied())
        assert gw.pid is not None
        fig["gateway_rss_mb"] = (proc_status_kb(gw.pid, "VmRSS") or 0) / 1024
        fig["gateway_peak_rss_mb"] = (proc_status_kb(gw.pid, "VmHWM") or 0) / 1024
        c0, c1 = fig["proxy"].pop("window")
        fig["direct"].pop("window")
        frames = 2 * fig["proxy"]["answered_in_window"]  # each MeterValues and its answer
        fig["gateway_cpu_s"] = None if c0 is None or c1 is None else c1 - c0
        fig["gateway_cpu_ms_per_frame"] = (
            None if not frames or fig["gateway_cpu_s"] is None
            else 1000 * fig["gateway_cpu_s"] / frames
        )  # fmt: skip
        fig["gateway_cpu_pct"] = (
            None if fig["gateway_cpu_s"] is None else 100 * fig["gateway_cpu_s"] / a.seconds
        )
        for way in ("request_ms", "answer_ms"):
            fig[f"added_{way}"] = {
                q: fig["proxy"][way][q] - fig["direct"][way][q] for q in ("p50", "p99")
            }
        fig["loadavg_after"] = loadavg()
        return fig


def _ms(pair: dict[str, float]) -> str:
    return f"{pair['p50']:.2f} / {pair['p99']:.2f} ms"


def report(fig: dict[str, Any]) -> None:
    d, p = fig["direct"], fig["proxy"]
    added_req, added_ans = fig["added_request_ms"], fig["added_answer_ms"]
    worst = max(added_req["p99"], added_ans["p99"])
    peak = fig["gateway_peak_rss_mb"]
    rss = f"{fig['gateway_rss_mb']:.1f} / {peak:.1f} MB"
    load = f"{fig['loadavg_before']} / {fig['loadavg_after']}"
    rows: list[Row] = [
        ("chargers x interval", f"{fig['chargers']} x {fig['interval_s']:.0f} s", ""),
        ("MeterValues measured (direct / proxy)", f"{d['measured']} / {p['measured']}", ""),
        ("direct charger->CSMS p50 / p99", _ms(d["request_ms"]), "no gateway"),
        ("proxy charger->CSMS p50 / p99", _ms(p["request_ms"]), "tapped, stored, forwarded"),
        ("direct CSMS->charger p50 / p99", _ms(d["answer_ms"]), ""),
        ("proxy CSMS->charger p50 / p99", _ms(p["answer_ms"]), ""),
        ("added charger->CSMS p50 / p99", _ms(added_req), ""),
        ("added CSMS->charger p50 / p99", _ms(added_ans), ""),
        ("added p99 (worst direction)", f"{worst:.2f} ms",
         f"target <= {TARGET_ADDED_P99_MS:.0f}: {verdict(worst <= TARGET_ADDED_P99_MS)}"),
        ("gateway RSS (end / peak)", rss,
         f"target <= {TARGET_RSS_MB:.0f}: {verdict(peak <= TARGET_RSS_MB)}"),
        ("gateway CPU per forwarded frame", f"{fig['gateway_cpu_ms_per_frame']:.3f} ms",
         f"{fig['gateway_cpu_pct']:.1f}% of a core"),
        ("load average before / after", load, "1/5/15 min"),
    ]  # fmt: skip
    print_table(rows)


def main() -> None:
    p = cli.parser(__name__, __doc__ or "")
    p.add_argument("--chargers", type=int, default=200)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between MeterValues")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    cli.add_output_options(p)
    a = p.parse_args()
    random.seed(1)
    cli.run_and_report(a, run, report)


if __name__ == "__main__":
    main()
