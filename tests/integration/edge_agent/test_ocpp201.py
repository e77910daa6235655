"""OCPP 2.0.1 at the edge, with the ``ocpp`` library's own 2.0.1 ChargePoint as the charger over
real WebSockets (tests/support/ocpp_peer.py): the local central system negotiates ``ocpp2.0.1``
and takes a transaction's TransactionEvents, MeterValues, StatusNotifications and
BootNotification as the same captures as 1.6's; through ``edge-agent run --source ocpp``, the
bridge, InfluxDB, the sessions job and the API, a 2.0.1 session is meter end - meter start."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint, call201
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port, port_open
from tests.integration.edge_agent.test_ocpp_source import central
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.influx import influxql
from tests.support.ocpp_peer import charge_point
from tests.support.processes import BIN, Procs, client_settings, start_api, start_bridge
from tests.support.sessions_check import api_sessions, sessions_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ_KEY = "r" * 32
TOKEN = "04C0FFEE1234"


def sample(value: float, measurand: str, unit: str, **more: Any) -> dict[str, Any]:
    return {"value": value, "measurand": measurand, "unitOfMeasure": {"unit": unit}, **more}


async def one_transaction(cp: ChargePoint, at: Any, tx: str) -> list[Any]:
    """Boot, Occupied, a transaction Started (1000 Wh) / Updated (1.7 kWh, 7 kW, 3 phases) /
    Ended (2400 Wh, EVDisconnected), a MeterValues after it, then Available; the answers."""
    energy = "Energy.Active.Import.Register"
    return [
        await cp.call(
            call201.BootNotification(
                charging_station={
                    "vendorName": "Acme",
                    "model": "AC-201",
                    "serialNumber": "SN-201",
                    "firmwareVersion": "2.0.1-a",
                },
                reason="PowerUp",
            )
        ),
        await cp.call(call201.StatusNotification(at(0), "Occupied", 1, 1)),
        await cp.call(
            call201.TransactionEvent(
                "Started",
                at(1),
                "CablePluggedIn",
                0,
                {"transactionId": tx, "chargingState": "EVConnected"},
                meter_value=[
                    {
                        "timestamp": at(1),
                        "sampledValue": [sample(1000, energy, "Wh", context="Transaction.Begin")],
                    }
                ],
                evse={"id": 1, "connectorId": 1},
                id_token={"idToken": TOKEN, "type": "ISO14443"},
            )
        ),
        await cp.call(
            call201.TransactionEvent(
                "Updated",
                at(3),
                "MeterValuePeriodic",
                1,
                {"transactionId": tx, "chargingState": "Charging"},
                meter_value=[
                    {
                        "timestamp": at(3),
                        "sampledValue": [
                            sample(1.7, energy, "kWh", context="Sample.Periodic"),
                            {
                                **sample(7, "Power.Active.Import", "W"),
                                "unitOfMeasure": {"unit": "W", "multiplier": 3},
                            },
                            sample(10.5, "Current.Import", "A", phase="L1"),
                            sample(10.25, "Current.Import", "A", phase="L2"),
                            sample(10.75, "Current.Import", "A", phase="L3"),
                        ],
                    }
                ],
            )
        ),
        await cp.call(
            call201.TransactionEvent(
                "Ended",
                at(5),
                "EVCommunicationLost",
                2,
                {"transactionId": tx, "chargingState": "Idle", "stoppedReason": "EVDisconnected"},
                meter_value=[
                    {
                        "timestamp": at(5),
                        "sampledValue": [sample(2400, energy, "Wh", context="Transaction.End")],
                    }
                ],
            )
        ),
        await cp.call(
            call201.MeterValues(
                1,
                [
                    {
                        "timestamp": at(6),
                        "sampledValue": [sample(2400, energy, "Wh", context="Sample.Clock")],
                    }
                ],
            )
        ),
        await cp.call(call201.StatusNotification(at(7), "Available", 1, 1)),
    ]


async def test_a_2_0_1_charger_gets_2_0_1_and_its_transaction_becomes_captures(
    tmp_path: Path,
) -> None:
    """A charger offering ocpp1.6 and ocpp2.0.1 is given 2.0.1; the library's 2.0.1
    ChargePoint's boot is Accepted, its TransactionEvent with a token gets idTokenInfo Accepted,
    and the captures are those of a 1.6 transaction: started with the hash and meter start,
    phases and a kW multiplier, ended with the stop reason, statuses in 1.6's words."""
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    async with asyncio.timeout(30), central(tmp_path) as (cs, got):
        url = f"ws://127.0.0.1:{cs.port}/ocpp/CS-both"
        offer = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
        async with connect(url, subprotocols=offer) as ws:
            assert ws.subprotocol == "ocpp2.0.1"
        async with charge_point(cs.port, "CS-201", version="2.0.1") as cp:
            boot, _, started, updated, *_ = await one_transaction(cp, at, "tx-201-a")
        assert (boot.status, boot.interval) == ("Accepted", 300)
        assert started.id_token_info == {"status": "Accepted"}
        assert updated.id_token_info is None
        await asyncio.sleep(0)  # the collector took the last batch
    mine = [c for c in got.captures if c.charger_id == "CS-201"]
    assert len(mine) == 7, mine
    boot_c, occ_c, start_c, upd_c, end_c, mv_c, avail_c = mine
    assert boot_c.charger_info == {"vendor": "Acme", "model": "AC-201", "serial": "SN-201",
                                   "firmware": "2.0.1-a"}  # fmt: skip
    assert (occ_c.status, occ_c.transaction_id, occ_c.evse_id) == ("Occupied", None, 1)
    assert (start_c.tx_event, start_c.transaction_id, start_c.values) == (
        "started", "tx-201-a", {"energy_wh": 1000.0},
    )  # fmt: skip
    assert start_c.status == "Preparing"
    assert start_c.id_tag_hash is not None
    assert re.fullmatch(r"[0-9a-f]{32}", start_c.id_tag_hash)
    assert upd_c.status == "Charging"
    assert upd_c.values == {"energy_wh": 1700.0, "power_w": 7000.0, "current_l1_a": 10.5,
                            "current_l2_a": 10.25, "current_l3_a": 10.75}  # fmt: skip
    assert (end_c.tx_event, end_c.stop_reason, end_c.values, end_c.status) == (
        "ended", "EVDisconnected", {"energy_wh": 2400.0}, "Available",
    )  # fmt: skip
    assert (end_c.evse_id, end_c.connector_id) == (1, 1)
    assert mv_c.transaction_id is None  # the transaction had ended
    assert avail_c.status == "Available"


async def test_a_transaction_keeps_its_evse_across_a_gateway_restart(tmp_path: Path) -> None:
    """Started on EVSE 2 connector 3, then the gateway (the central system) restarts: the
    charger's Ended, which names no EVSE (2.0.1 names it only in the first event), is still
    stored on EVSE 2 connector 3, and the session's readings all carry one connector."""
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    def tx_event(kind: str, s: int, seq: int, **more: Any) -> Any:
        return call201.TransactionEvent(
            kind, at(s), "Trigger", seq, {"transactionId": "T-9"}, **more
        )

    async with asyncio.timeout(30):
        async with central(tmp_path) as (cs, got):
            async with charge_point(cs.port, "CS-R", version="2.0.1") as cp:
                await cp.call(tx_event("Started", 0, 0, evse={"id": 2, "connectorId": 3}))
            await asyncio.sleep(0)
            before = list(got.captures)
        async with central(tmp_path) as (cs, got):
            async with charge_point(cs.port, "CS-R", version="2.0.1") as cp:
                await cp.call(tx_event("Ended", 9, 1))
            await asyncio.sleep(0)
            after = list(got.captures)
    [start], [end] = before, after
    assert (start.tx_event, start.evse_id, start.connector_id) == ("started", 2, 3)
    assert (end.tx_event, end.evse_id, end.connector_id) == ("ended", 2, 3)
    assert end.transaction_id == "T-9"


async def test_2_0_1_through_the_pipeline_to_influxdb_latest_and_its_session(
    broker: BrokerInfo, influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """``edge-agent run --source ocpp`` with a 2.0.1 charger: the readings reach InfluxDB with
    their keys, statuses and transaction marks (the token only as its hash), ``latest`` shows
    the last status, the registry what the boot said, and the sessions job makes one session
    ended by its stop: energy_wh = 2400 - 1000, the stop reason sent."""
    gateway = f"gw-201-{uuid.uuid4().hex[:6]}"
    charger = f"CS-{uuid.uuid4().hex[:6]}"
    tx = f"tx-{uuid.uuid4().hex[:8]}"
    start_bridge(procs, broker, influx_db)
    api = start_api(procs, influx_db, READ_KEY, broker=broker)
    procs.start(
        "sessions",
        [sys.executable, "-m", "sessions"],
        sessions_env(influx_db.url, influx_db.database, silence="6h"),
    )
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
    # After the boot (a reading at the gateway's clock), so the last status is the newest.
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)

    def at(s: int) -> str:
        return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")

    async with asyncio.timeout(60), charge_point(port, charger, version="2.0.1") as cp:
        await one_transaction(cp, at, tx)

    def rows(select: str, where: str = "") -> list[list[Any]]:
        q = f"SELECT {select} FROM readings WHERE charger_id = '{charger}'{where}"
        return influxql(influx_db.url, influx_db.database, q)

    await asyncio.to_thread(wait_until, "7 readings stored", lambda: len(rows("*")) >= 7, 60)
    by_second = {
        int((datetime.fromisoformat(r[0].replace("Z", "+00:00")) - t0).total_seconds()): r[1:]
        for r in rows("energy_wh, power_w, current_l3_a, status, transaction_id")
    }
    assert by_second[0] == [None, None, None, "Occupied", None]
    assert by_second[1] == [1000.0, None, None, "Preparing", tx]
    assert by_second[3] == [1700.0, 7000.0, 10.75, "Charging", tx]
    assert by_second[5] == [2400.0, None, None, "Available", tx]
    marks = rows("tx_event, stop_reason, id_tag_hash", " AND tx_event =~ /./")
    assert [r[1:3] for r in marks] == [["started", None], ["ended", "EVDisconnected"]]
    assert re.fullmatch(r"[0-9a-f]{32}", marks[0][3])
    assert TOKEN not in str(rows("*"))

    def latest_is_last() -> bool:
        r = httpx.get(
            f"{api}/v1/chargers/{charger}/latest", headers={"X-API-Key": READ_KEY}, timeout=5
        )
        return r.status_code == 200 and r.json()["status"] == "Available"

    await asyncio.to_thread(wait_until, "latest shows the last reading", latest_is_last, 30)

    def sessions() -> list[dict[str, Any]]:
        path = f"/v1/chargers/{charger}/sessions"
        return api_sessions(api, READ_KEY, path, {"start": "-1d", "end": at(3600)})

    def ended() -> bool:
        return any(s["state"] == "ended" for s in sessions())

    await asyncio.to_thread(wait_until, "the job ended the 2.0.1 session", ended, 60)
    [s] = sessions()
    assert (s["transaction_id"], s["evse_id"], s["connector_id"]) == (tx, 1, 1), s
    assert (s["end_cause"], s["stop_reason"]) == ("stop", "EVDisconnected"), s
    assert (s["meter_start_wh"], s["meter_stop_wh"], s["energy_wh"]) == (1000.0, 2400.0, 1400.0)
    assert s["max_power_w"] == 7000.0, s
    assert s["id_tag_hash"] == marks[0][3], s
    assert s["flags"] == [], s
    page = await asyncio.to_thread(
        httpx.get, f"{api}/v1/chargers/{charger}", headers={"X-API-Key": READ_KEY}, timeout=5
    )
    info = page.json()
    assert (info["vendor"], info["model"], info["serial"], info["firmware"]) == (
        "Acme", "AC-201", "SN-201", "2.0.1-a",
    ), info  # fmt: skip
