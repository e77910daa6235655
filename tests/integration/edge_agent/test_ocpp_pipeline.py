"""OCPP through the whole pipeline: a charger simulated with the ``ocpp`` library's own
ChargePoint talks OCPP 1.6J to ``edge-agent run --source ocpp``; its meter values land in
InfluxDB through Mosquitto and the real bridge, and ``latest`` shows the last one."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint, call
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port, port_open
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.influx import influxql
from tests.support.processes import BIN, Procs, client_settings, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ_KEY = "r" * 32


def sv(value: str, measurand: str, unit: str, **more: str) -> dict[str, str]:
    return {"value": value, "measurand": measurand, "unit": unit, **more}


async def charging_session(port: int, charger_id: str, t0: datetime) -> None:
    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    url = f"ws://127.0.0.1:{port}/ocpp/{charger_id}"
    async with connect(url, subprotocols=[Subprotocol("ocpp1.6")]) as ws:
        cp = ChargePoint(charger_id, ws, response_timeout=20)
        task = asyncio.create_task(cp.start())
        try:
            await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
            await cp.call(call.StatusNotification(1, "NoError", "Preparing", timestamp=at(0)))
            start = await cp.call(call.StartTransaction(1, "TAG", 1_000, at(1)))
            tid = start.transaction_id
            await cp.call(call.StatusNotification(1, "NoError", "Charging", timestamp=at(2)))
            wh = [
                sv("1500", "Energy.Active.Import.Register", "Wh"),
                sv("11000", "Power.Active.Import", "W"),
                sv("16.5", "Current.Import", "A", phase="L1"),
            ]
            await cp.call(call.MeterValues(1, [{"timestamp": at(3), "sampledValue": wh}], tid))
            kwh = [
                sv("2.25", "Energy.Active.Import.Register", "kWh"),
                sv("7.5", "Power.Active.Import", "kW"),
            ]
            await cp.call(call.MeterValues(1, [{"timestamp": at(4), "sampledValue": kwh}], tid))
            await cp.call(call.StopTransaction(2_400, at(5), tid))
            await cp.call(call.StatusNotification(1, "NoError", "Finishing", timestamp=at(6)))
        finally:
            task.cancel()


async def test_ocpp_meter_values_reach_influxdb_and_latest(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """Wh and kWh meter values, per-phase current and status changes sent in OCPP 1.6J are
    stored with the right keys, units, timestamps and statuses; latest is the last one; the
    transaction's start and end are stored as such (the tag as its hash only) and the boot's
    charger_info is in the charger registry."""
    gateway = f"gw-ocpp-{uuid.uuid4().hex[:6]}"
    charger = f"CP-{uuid.uuid4().hex[:6]}"
    start_bridge(procs, broker, influx_db)
    api = start_api(procs, influx_db, READ_KEY, broker=broker)
    port = free_port()
    env = env_for(
        EdgeSettings,
        **client_settings(broker, gateway),
        gateway_id=gateway,
        outbox_path=tmp_path / "outbox.sqlite3",
        ocpp={"port": port, "state_path": tmp_path / "ocpp-state.json"},
    )
    edge = procs.start("edge-ocpp", [str(BIN / "edge-agent"), "run", "--source", "ocpp"], env)
    edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)

    # After the boot (a reading at the gateway's clock), so that the session's last status is
    # the charger's newest reading (a few seconds ahead: well within MAX_FUTURE_S).
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    async with asyncio.timeout(60):
        await charging_session(port, charger, t0)

    q = f"SELECT * FROM readings WHERE charger_id = '{charger}'"

    def stored() -> int:
        return len(influxql(influx_db.url, influx_db.database, q))

    await asyncio.to_thread(wait_until, "8 OCPP readings stored", lambda: stored() >= 8, 60)
    rows = influxql(
        influx_db.url,
        influx_db.database,
        "SELECT energy_wh, power_w, current_l1_a, status FROM readings "
        f"WHERE charger_id = '{charger}'",
    )
    by_second = {
        int((datetime.fromisoformat(r[0].replace("Z", "+00:00")) - t0).total_seconds()): r[1:]
        for r in rows
    }
    assert by_second[3] == [1500.0, 11000.0, 16.5, "Charging"]
    assert by_second[4] == [2250.0, 7500.0, None, "Charging"]  # kWh -> Wh, kW -> W
    assert by_second[0][3] == "Preparing"
    assert by_second[6][3] == "Finishing"

    def latest_is_last() -> bool:
        r = httpx.get(
            f"{api}/v1/chargers/{charger}/latest", headers={"X-API-Key": READ_KEY}, timeout=5
        )
        return r.status_code == 200 and r.json()["status"] == "Finishing"

    await asyncio.to_thread(wait_until, "latest shows the last reading", latest_is_last, 30)

    # The transaction's start and end are stored as such, with the tag only as its hash; the
    # boot's charger_info is in the charger registry.
    tx = influxql(
        influx_db.url,
        influx_db.database,
        "SELECT tx_event, transaction_id, energy_wh, stop_reason, id_tag_hash FROM readings "
        f"WHERE charger_id = '{charger}' AND tx_event =~ /./",
    )
    assert len(tx) == 2, tx
    (_, ev0, tid0, wh0, reason0, hash0), (_, ev1, tid1, wh1, reason1, hash1) = tx
    assert (ev0, wh0, ev1, wh1) == ("started", 1000.0, "ended", 2400.0)
    assert tid0 == tid1
    assert (reason0, reason1) == (None, "Local")  # the stop gave no reason: OCPP's default
    assert re.fullmatch(r"[0-9a-f]{32}", hash0)
    assert hash1 is None  # the stop named no tag
    registry = influxql(
        influx_db.url,
        influx_db.database,
        f'SELECT vendor, model, gateway_id FROM "keep"."chargers" WHERE charger_id = \'{charger}\'',
    )
    assert [r[1:] for r in registry] == [["V", "M", gateway]]
