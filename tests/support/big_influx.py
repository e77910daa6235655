"""Preload an InfluxDB 1.x database with many readings, fast: line protocol over HTTP, gzip,
big requests, a few concurrent writers (issue 21's "100 million points" start-up test).

The points are realistic but minimal: measurement ``readings`` with tags charger_id,
gateway_id, evse_id, connector_id and fields seq (integer), epoch (string) and power_w
(float), second precision, spread evenly over ``span`` so that they fill many shard groups.
Each charger's newest point is known (:meth:`Fleet.newest`), so a test can check ``latest``.

``python -m tests.support.big_influx URL DB POINTS`` preloads and prints the rate.
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx

#: A request InfluxDB answers 5xx (a write timeout while it is busy) is sent again this often.
RETRIES = 5
#: One outbox epoch per gateway (16 lowercase hex digits).
EPOCH_OF = "{:016x}"


@dataclass(frozen=True)
class Fleet:
    """``gateways`` x ``per_gateway`` chargers, each one reading per step; the newest step ends
    at ``end_s`` (unix seconds), the oldest ``points / chargers`` steps before it."""

    gateways: int
    per_gateway: int
    points: int
    end_s: int
    span: timedelta

    @property
    def chargers(self) -> int:
        return self.gateways * self.per_gateway

    @property
    def steps(self) -> int:
        return -(-self.points // self.chargers)

    @property
    def step_s(self) -> int:
        return max(1, int(self.span.total_seconds()) // self.steps)

    def gateway(self, g: int) -> str:
        return f"gw-big-{g:04d}"

    def charger(self, g: int, c: int) -> str:
        return f"CP-BIG-{g:04d}-{c:03d}"

    def epoch(self, g: int) -> str:
        return EPOCH_OF.format(0xB16_0000 + g)

    def ts_of(self, step: int) -> int:
        """Unix seconds of step ``step`` (0 = oldest)."""
        return self.end_s - (self.steps - 1 - step) * self.step_s

    def seq_of(self, step: int, c: int) -> int:
        """The gateway numbers its chargers' readings one after another."""
        return step * self.per_gateway + c + 1

    def newest(self, g: int, c: int) -> tuple[int, int]:
        """(unix seconds, seq) of the charger's newest point."""
        last = self.steps - 1
        return self.ts_of(last), self.seq_of(last, c)

    def bodies(self, first_step: int, stop_step: int, per_body: int) -> Iterator[bytes]:
        """Line protocol of steps [first_step, stop_step), ``per_body`` lines at most per body,
        gzipped."""
        prefixes = [
            (
                g,
                c,
                f"readings,charger_id={self.charger(g, c)},connector_id=1,evse_id=1,"
                f"gateway_id={self.gateway(g)} ",
                f',epoch="{self.epoch(g)}",power_w=',
            )
            for g in range(self.gateways)
            for c in range(self.per_gateway)
        ]
        per = self.per_gateway
        buf: list[str] = []
        for step in range(first_step, stop_step):
            ts = self.ts_of(step)
            base = step * per + 1
            pw = float(step % 22000)
            buf.extend(f"{pre}seq={base + c}i{mid}{pw} {ts}" for _g, c, pre, mid in prefixes)
            if len(buf) >= per_body:
                yield gzip.compress("\n".join(buf).encode(), compresslevel=1)
                buf = []
        if buf:
            yield gzip.compress("\n".join(buf).encode(), compresslevel=1)


def preload(
    url: str, database: str, fleet: Fleet, *, writers: int = 3, per_body: int = 50_000
) -> float:
    """Write every point of ``fleet``; returns the seconds it took. Writers share the steps;
    a refused request raises."""
    steps = fleet.steps
    bounds = [steps * k // writers for k in range(writers + 1)]
    errors: list[BaseException] = []

    def post(http: httpx.Client, body: bytes) -> None:
        """One request; a timeout (InfluxDB busy with a compaction: HTTP 500 "timeout") is
        tried again, which is harmless (a point written twice is one point)."""
        for attempt in range(RETRIES + 1):
            r = http.post(
                f"{url}/write",
                params={"db": database, "precision": "s"},
                content=body,
                headers={"Content-Encoding": "gzip"},
            )
            if r.status_code == 204:
                return
            if r.status_code < 500 or attempt == RETRIES:
                break
            time.sleep(1 + attempt)
        raise RuntimeError(f"write refused: {r.status_code} {r.text[:300]}")

    def write(lo: int, hi: int) -> None:
        try:
            with httpx.Client(timeout=300) as http:
                for body in fleet.bodies(lo, hi, per_body):
                    post(http, body)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [
        threading.Thread(target=write, args=(bounds[k], bounds[k + 1]), daemon=True)
        for k in range(writers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started


def main() -> None:
    url, database, points = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writers = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
    fleet = Fleet(100, 10, points, int(time.time()) - 60, timedelta(days=365))
    took = preload(url, database, fleet, writers=writers)
    print(f"{points} points, {writers} writers: {took:.1f} s, {points / took:,.0f} points/s")


if __name__ == "__main__":
    main()
