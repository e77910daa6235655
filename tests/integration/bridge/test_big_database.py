"""Issue 21: start-up does not grow with history. A database preloaded with ``POINTS`` readings
(line protocol written directly, :mod:`tests.support.big_influx`: 1,000 chargers behind 100
gateways over a year, some 53 shard groups) is given to a real bridge and a real API: the bridge
is ready (``/readyz``) and the API's ``latest`` is right for sampled chargers within
``START_BOUND_S`` of their start, with the newest-stored state an up-to-date bridge leaves, and
without it (a database written by a version before it).

The preload is slow by nature: measured on this project's 2-core machine, 100 million points in
326 s (306,324 points/s, nearly idle; the whole module 5 min 30 s), in 697 s (143,555 points/s,
load average 5-6) and in 1,603 s (62,396 points/s, load average 12-18: other test suites
running); ``pytest -s`` prints the figure. It runs once per module on an InfluxDB of its own,
removed afterwards. Run against the warm-up before the newest-stored state, the bridge never
became ready: its ``max(seq)`` over all history took 236 s against a 10 s timeout, retried
forever.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from bridge.settings import BridgeSettings
from telemetry_common.newest_state import ChargerMark, GatewayMark, charger_line, gateway_line
from telemetry_common.settings import env_for
from telemetry_stack.servers import ManagedProcess, free_port, start_influxd
from tests.support.big_influx import Fleet, preload
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.processes import Procs, start_api, start_bridge

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Readings preloaded (issue 21: "a database preloaded with 100 million points").
POINTS = 100_000_000
#: The issue's bound: bridge ready and ``latest`` right within this of the start.
START_BOUND_S = 10.0
READ = secrets.token_urlsafe(18)
#: Chargers whose ``latest`` is checked (spread over the fleet).
SAMPLED = [(0, 0), (17, 3), (42, 9), (63, 5), (99, 9)]
FLEET_GATEWAYS, FLEET_PER_GATEWAY = 100, 10


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxTarget, Fleet]]:
    """An InfluxDB of its own holding ``POINTS`` readings (no newest-stored state)."""
    port = free_port()
    proc: ManagedProcess = start_influxd(tmp_path_factory.mktemp("influxd-big"), port)
    try:
        url = f"http://127.0.0.1:{port}"
        database = "telemetry"
        httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
        fleet = Fleet(
            FLEET_GATEWAYS,
            FLEET_PER_GATEWAY,
            POINTS,
            int(time.time()) - 120,
            timedelta(days=365),
        )
        took = preload(url, database, fleet)
        print(f"\npreloaded {POINTS:,} points in {took:.0f} s ({POINTS / took:,.0f} points/s)")
        yield InfluxTarget(url=url, database=database), fleet
    finally:
        proc.stop()


def _influxql(db: InfluxTarget, statement: str) -> None:
    r = httpx.post(f"{db.url}/query", params={"db": db.database, "q": statement}, timeout=60)
    r.raise_for_status()
    assert "error" not in r.json()["results"][0], r.text


def _drop_state(db: InfluxTarget) -> None:
    """No newest-stored state (as a version before it left the database)."""
    for measurement in ("newest_chargers", "newest_gateways"):
        r = httpx.post(
            f"{db.url}/query",
            params={"db": db.database, "q": f'DROP MEASUREMENT "{measurement}"'},
            timeout=60,
        )
        r.raise_for_status()
        error = r.json()["results"][0].get("error", "")
        assert not error or "not found" in error, error


def _write_state(db: InfluxTarget, fleet: Fleet) -> None:
    """The newest-stored state an up-to-date bridge would have left for the preloaded fleet."""
    _influxql(db, 'CREATE RETENTION POLICY "keep" ON "telemetry" DURATION INF REPLICATION 1')
    lines = []
    for g in range(fleet.gateways):
        for c in range(fleet.per_gateway):
            ts_s, seq = fleet.newest(g, c)
            mark = ChargerMark(ts_s * 10**9, seq, fleet.gateway(g))
            lines.append(charger_line("bridge-old", fleet.charger(g, c), mark))
        ts_s, seq = fleet.newest(g, fleet.per_gateway - 1)
        key = (fleet.gateway(g), fleet.epoch(g))
        lines.append(gateway_line("bridge-old", key, GatewayMark(ts_s * 10**9, seq, ts_s * 10**9)))
    r = httpx.post(
        f"{db.url}/write",
        params={"db": db.database, "rp": "keep"},
        content="\n".join(lines).encode(),
        timeout=60,
    )
    assert r.status_code == 204, r.text


def _started_within_bound(
    procs: Procs, broker: BrokerInfo, db: InfluxTarget, fleet: Fleet
) -> dict[str, float]:
    """Start a bridge and an API; returns when each condition held (s after the start), and
    fails if one did not within ``START_BOUND_S``."""
    bridge_port = free_port()
    started = time.monotonic()
    start_bridge(procs, broker, db, extra_env=env_for(BridgeSettings, http_port=bridge_port))
    api = start_api(procs, db, READ)
    deadline = started + START_BOUND_S
    reached: dict[str, float] = {}
    want = {fleet.charger(g, c): fleet.newest(g, c) for g, c in SAMPLED}
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline and len(reached) < 1 + len(want):
            if "bridge ready" not in reached:
                try:
                    ready = http.get(f"http://127.0.0.1:{bridge_port}/readyz")
                except httpx.HTTPError:
                    ready = None
                if ready is not None and ready.status_code == 200:
                    reached["bridge ready"] = time.monotonic() - started
            for charger, (_ts, seq) in want.items():
                if charger in reached:
                    continue
                try:
                    got = http.get(
                        f"{api}/v1/chargers/{charger}/latest", headers={"X-API-Key": READ}
                    )
                except httpx.HTTPError:
                    continue
                if got.status_code == 200 and got.json().get("seq") == seq:
                    reached[charger] = time.monotonic() - started
            time.sleep(0.1)
    print(f"\nreached (s after start): {reached}")
    missing = ["bridge ready", *want.keys() - reached.keys()]
    assert set(missing) <= reached.keys(), f"not within {START_BOUND_S} s: {missing}"
    return reached


def test_a_database_written_before_the_state_does_not_block_start(
    procs: Procs, broker: BrokerInfo, big_db: tuple[InfluxTarget, Fleet]
) -> None:
    """No newest-stored state (an older version wrote the database): the bounded warm-up (the
    recent window) makes the bridge ready in time; the rest of history is read in the
    background."""
    db, fleet = big_db
    _drop_state(db)
    _started_within_bound(procs, broker, db, fleet)


def test_a_big_database_with_the_state_is_ready_in_seconds(
    procs: Procs, broker: BrokerInfo, big_db: tuple[InfluxTarget, Fleet]
) -> None:
    """With the state an up-to-date bridge leaves, start-up reads it (one point per charger and
    bridge) and the recent window: ready and ``latest`` right within the bound."""
    db, fleet = big_db
    _drop_state(db)
    _write_state(db, fleet)
    _started_within_bound(procs, broker, db, fleet)
