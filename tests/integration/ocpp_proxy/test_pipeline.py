"""Proxy mode through the whole pipeline: ``edge-agent run --source ocpp`` with ``mode=proxy``
between the ``ocpp`` library's ChargePoint (the charger) and the library's central-system role
(the operator's CSMS), the readings on to Mosquitto, the bridge, InfluxDB and ``latest``; the
gateway process is restarted while the CSMS is down."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.ocpp.lib import call
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port, port_open
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.influx import influxql
from tests.support.ocpp_csms import csms
from tests.support.ocpp_peer import charge_point
from tests.support.processes import BIN, Procs, client_settings, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ_KEY = "r" * 32


def energy(ts: str, wh: str) -> list[dict[str, Any]]:
    sample = {"value": wh, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    return [{"timestamp": ts, "sampledValue": [sample]}]


async def test_csms_down_and_gateway_restarted_mid_transaction(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """The CSMS is down for a transaction's whole life and the gateway process restarts between
    its MeterValues and its stop: when the CSMS comes up it receives Start, MeterValues and Stop
    once, in order, with its transaction id put into the later two, then the live frames; the
    readings (with the charger's transaction id and connector, start and end) reach InfluxDB,
    and ``latest`` shows the last status."""
    gateway = f"gw-proxy-{uuid.uuid4().hex[:6]}"
    charger = f"CP-{uuid.uuid4().hex[:6]}"
    start_bridge(procs, broker, influx_db)
    api = start_api(procs, influx_db, READ_KEY, broker=broker)
    port, csms_port = free_port(), free_port()
    env = env_for(
        EdgeSettings,
        **client_settings(broker, gateway),
        gateway_id=gateway,
        outbox_path=tmp_path / "outbox.sqlite3",
        ocpp={
            "port": port,
            "state_path": tmp_path / "ocpp-state.json",
            "mode": "proxy",
            "upstream_url": f"ws://127.0.0.1:{csms_port}/ocpp/{{charger_id}}",
            "upstream_open_timeout_s": 2,
            "upstream_retry_max_s": 0.5,
        },
    )
    argv = [str(BIN / "edge-agent"), "run", "--source", "ocpp"]
    edge = procs.start("edge-proxy", argv, env)
    edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)

    t0 = datetime.now(UTC).replace(microsecond=0)

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    async with asyncio.timeout(60), charge_point(port, charger) as cp:
        await cp.call(call.StatusNotification(1, "NoError", "Preparing", timestamp=at(0)))
        start = await cp.call(call.StartTransaction(1, "TAG-9", 1_000, at(1)))
        tid = start.transaction_id
        assert tid < 0  # the gateway's id
        assert await cp.call(call.MeterValues(1, energy(at(2), "1500"), tid)) is not None

    assert edge.stop(timeout=15) == 0
    edge = procs.start("edge-proxy-again", argv, env)
    edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)

    async with asyncio.timeout(60), charge_point(port, charger) as cp:
        assert await cp.call(call.StopTransaction(2_400, at(3), tid)) is not None
        async with csms(csms_port, first_tid=501) as upstream:

            def replayed() -> bool:
                return len(upstream.frames(charger).calls_received()) >= 3

            await asyncio.to_thread(wait_until, "the replay", replayed, 30)
            await cp.call(call.StatusNotification(1, "NoError", "Available", timestamp=at(4)))
            got = upstream.frames(charger).calls_received()
    assert [a for a, _ in got] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
        "StatusNotification",
    ]
    assert [p.get("transactionId") for _, p in got] == [None, 501, 501, None]

    rows = f"SELECT tx_event, transaction_id, connector_id, energy_wh FROM readings WHERE charger_id = '{charger}' AND tx_event =~ /./"  # noqa: E501

    def both_ends() -> bool:
        return len(influxql(influx_db.url, influx_db.database, rows)) >= 2

    await asyncio.to_thread(wait_until, "start and end stored", both_ends, 60)
    tx = [r[1:] for r in influxql(influx_db.url, influx_db.database, rows)]
    assert tx == [["started", str(tid), "1", 1000.0], ["ended", str(tid), "1", 2400.0]]

    def latest_is_available() -> bool:
        r = httpx.get(
            f"{api}/v1/chargers/{charger}/latest", headers={"X-API-Key": READ_KEY}, timeout=5
        )
        return r.status_code == 200 and r.json()["status"] == "Available"

    await asyncio.to_thread(wait_until, "latest shows the last status", latest_is_available, 30)
