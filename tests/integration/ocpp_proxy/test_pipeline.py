"""Proxy mode through the whole pipeline: ``edge-agent run --source ocpp`` with ``mode=proxy``
between the ``ocpp`` library's ChargePoint (the charger, 1.6 or 2.0.1) and the library's
central-system role (the operator's CSMS), the readings on to Mosquitto, the bridge, InfluxDB
and ``latest``; the gateway process is restarted while the CSMS is down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.ocpp.lib import call, call201
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import free_port, port_open
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.influx import influxql
from tests.support.ocpp_csms import csms
from tests.support.ocpp_peer import Version, charge_point
from tests.support.processes import BIN, Procs, client_settings, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

READ_KEY = "r" * 32


def energy(ts: str, wh: str) -> list[dict[str, Any]]:
    sample = {"value": wh, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    return [{"timestamp": ts, "sampledValue": [sample]}]


class Scenario:
    """One version's transaction while the CSMS is down, cut by a gateway restart: what the
    charger sends, and what the CSMS must receive once it is up."""

    def __init__(self, version: Version, at: Callable[[int], str]) -> None:
        self.version = version
        self.at = at

    async def before_restart(self, cp: Any) -> str:
        """Status, the start and a meter value; the transaction id the charger uses."""
        at = self.at
        if self.version == "1.6":
            await cp.call(call.StatusNotification(1, "NoError", "Preparing", timestamp=at(0)))
            start = await cp.call(call.StartTransaction(1, "TAG-9", 1_000, at(1)))
            assert start.transaction_id < 0  # the gateway's id
            tid = start.transaction_id
            assert await cp.call(call.MeterValues(1, energy(at(2), "1500"), tid)) is not None
            return str(tid)
        await cp.call(call201.StatusNotification(at(0), "Occupied", 1, 1))
        token = {"idToken": "TAG-9", "type": "ISO14443"}
        for event in (
            self._event("Started", 1, 0, 1000, evse={"id": 1, "connectorId": 1}, id_token=token),
            self._event("Updated", 2, 1, 1500),
        ):
            assert await cp.call(event) is not None  # answered by the gateway
        return "tx-9"

    async def after_restart(self, cp: Any, tid: str) -> None:
        """The stop (2.0.1: without the EVSE, which only the gateway's state file knows)."""
        if self.version == "1.6":
            assert await cp.call(call.StopTransaction(2_400, self.at(3), int(tid))) is not None
        else:
            assert await cp.call(self._event("Ended", 3, 2, 2400)) is not None

    async def live(self, cp: Any) -> None:
        if self.version == "1.6":
            await cp.call(call.StatusNotification(1, "NoError", "Available", timestamp=self.at(4)))
        else:
            await cp.call(call201.StatusNotification(self.at(4), "Available", 1, 1))

    def check_csms(self, got: list[tuple[str, dict[str, Any]]], tid: str) -> None:
        if self.version == "1.6":
            assert [a for a, _ in got] == [
                "StartTransaction",
                "MeterValues",
                "StopTransaction",
                "StatusNotification",
            ]
            assert [p.get("transactionId") for _, p in got] == [None, 501, 501, None]
            return
        assert [a for a, _ in got] == ["TransactionEvent"] * 3 + ["StatusNotification"]
        assert [(p["eventType"], p["seqNo"]) for _, p in got[:3]] == [
            ("Started", 0),
            ("Updated", 1),
            ("Ended", 2),
        ]
        assert {p["transactionInfo"]["transactionId"] for _, p in got[:3]} == {tid}

    def _event(self, kind: str, s: int, seq: int, wh: int, **more: Any) -> Any:
        sample = {
            "value": wh,
            "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"},
        }
        reason = {"Started": "Authorized", "Updated": "MeterValuePeriodic"}.get(
            kind, "StopAuthorized"
        )
        return call201.TransactionEvent(
            kind,
            self.at(s),
            reason,
            seq,
            {"transactionId": "tx-9"},
            meter_value=[{"timestamp": self.at(s), "sampledValue": [sample]}],
            **more,
        )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_csms_down_and_gateway_restarted_mid_transaction(
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    procs: Procs,
    tmp_path: Path,
    version: Version,
) -> None:
    """The CSMS is down for a transaction's whole life and the gateway process restarts between
    its meter values and its stop: when the CSMS comes up it receives the transaction's
    messages once, in order (1.6: Start, MeterValues, Stop with its transaction id put into the
    later two; 2.0.1: TransactionEvent Started, Updated, Ended as the charger sent them), then
    the live frames; the readings (with the charger's transaction id and connector, start and
    end: 2.0.1's Ended names no EVSE, the gateway kept it across the restart) reach InfluxDB,
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

    scenario = Scenario(version, at)
    async with asyncio.timeout(60), charge_point(port, charger, version=version) as cp:
        tid = await scenario.before_restart(cp)

    assert edge.stop(timeout=15) == 0
    edge = procs.start("edge-proxy-again", argv, env)
    edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)

    async with asyncio.timeout(60), charge_point(port, charger, version=version) as cp:
        await scenario.after_restart(cp, tid)
        async with csms(csms_port, first_tid=501) as upstream:

            def replayed() -> bool:
                return len(upstream.frames(charger).calls_received()) >= 3

            await asyncio.to_thread(wait_until, "the replay", replayed, 30)
            await scenario.live(cp)
            got = upstream.frames(charger).calls_received()
    scenario.check_csms(got, tid)

    rows = f"SELECT tx_event, transaction_id, connector_id, energy_wh FROM readings WHERE charger_id = '{charger}' AND tx_event =~ /./"  # noqa: E501

    def both_ends() -> bool:
        return len(influxql(influx_db.url, influx_db.database, rows)) >= 2

    await asyncio.to_thread(wait_until, "start and end stored", both_ends, 60)
    tx = [r[1:] for r in influxql(influx_db.url, influx_db.database, rows)]
    assert tx == [["started", tid, "1", 1000.0], ["ended", tid, "1", 2400.0]]

    def latest_is_available() -> bool:
        r = httpx.get(
            f"{api}/v1/chargers/{charger}/latest", headers={"X-API-Key": READ_KEY}, timeout=5
        )
        return r.status_code == 200 and r.json()["status"] == "Available"

    await asyncio.to_thread(wait_until, "latest shows the last status", latest_is_available, 30)
