"""The OCPP source against a real OCPP 1.6J client: the ``ocpp`` library's own ChargePoint over a
real WebSocket on loopback. Asserts the Captures the source yields (what the agent stores)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from edge_agent.agent import EdgeAgent, build_payload
from edge_agent.capture import Capture
from edge_agent.ocpp import CentralSystem, OcppSettings, ocpp_source
from edge_agent.ocpp.lib import ChargePoint, InternalError, call
from edge_agent.outbox import Outbox
from edge_agent.settings import EdgeSettings
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.schema import ReadingBatch
from telemetry_common.tls import client_context
from telemetry_stack.servers import free_port, port_open
from tests.support.fixtures import TestPki
from tests.support.ocpp_peer import OCPP16, charge_point

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def sv(value: str, measurand: str, unit: str | None = None, **more: str) -> dict[str, str]:
    out = {"value": value, "measurand": measurand, **more}
    if unit is not None:
        out["unit"] = unit
    return out


class Collector:
    """Consumes the source like the agent does: a batch is 'stored' before the next is asked."""

    def __init__(self, batches: AsyncIterator[list[Capture]]) -> None:
        self.captures: list[Capture] = []
        self._batches = batches
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self._batches:
            self.captures.extend(batch)


@contextlib.asynccontextmanager
async def central(tmp_path: Path) -> AsyncIterator[tuple[CentralSystem, Collector]]:
    settings = OcppSettings(port=0, state_path=tmp_path / "ocpp-state.json")
    async with CentralSystem(settings) as cs:
        collector = Collector(cs.captures())
        try:
            yield cs, collector
        finally:
            collector.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector.task


def charger(port: int, charger_id: str) -> contextlib.AbstractAsyncContextManager[ChargePoint]:
    return charge_point(port, charger_id, response_timeout=10)


async def test_a_charging_session_becomes_captures(tmp_path: Path) -> None:
    """Boot, status changes, a transaction with MeterValues in Wh and kWh, per-phase samples, an
    unknown measurand, and a stop with transaction data: every meterValue is one capture with
    its own ts, converted units, the connector's status, the allocated transaction id."""
    async with (
        asyncio.timeout(30),
        central(tmp_path) as (cs, got),
        charger(cs.port, "CP-0042") as cp,
    ):
        boot = await cp.call(
            call.BootNotification(charge_point_model="M1", charge_point_vendor="V")
        )
        assert (boot.status, boot.interval) == ("Accepted", 300)
        assert datetime.fromisoformat(boot.current_time).tzinfo is not None
        beat = await cp.call(call.Heartbeat())
        assert abs(datetime.fromisoformat(beat.current_time) - datetime.now(UTC)) < timedelta(
            seconds=30
        )
        await cp.call(call.StatusNotification(1, "NoError", "Preparing", timestamp=at(0)))
        start = await cp.call(call.StartTransaction(1, "TAG1", 12_345, at(1)))
        assert start.id_tag_info["status"] == "Accepted"
        tid = start.transaction_id
        assert isinstance(tid, int)
        assert tid > 0
        await cp.call(call.StatusNotification(1, "NoError", "Charging", timestamp=at(2)))
        wh = [
            sv("12400", "Energy.Active.Import.Register", "Wh", context="Sample.Periodic"),
            sv("7200", "Power.Active.Import", "W"),
            *(sv(a, "Current.Import", "A", phase=p) for a, p in (("10.5", "L1"), ("10.25", "L2"))),
            sv("10.75", "Current.Import", "A", phase="L3"),
            *(sv(v, "Voltage", "V", phase=p) for v, p in (("230.5", "L1-N"), ("229.5", "L2-N"))),
            sv("64", "SoC", "Percent", location="EV"),
            sv("41.5", "Temperature", "Celsius"),
            sv("50.0", "Frequency"),
        ]
        mv = call.MeterValues(1, [{"timestamp": at(3), "sampledValue": wh}], transaction_id=tid)
        await cp.call(mv)
        kwh = [
            sv("12.5", "Energy.Active.Import.Register", "kWh"),
            sv("7.25", "Power.Active.Import", "kW"),
        ]
        await cp.call(call.MeterValues(1, [{"timestamp": at(4), "sampledValue": kwh}], tid))
        odd = [sv("53.5", "Vendor.Pilot-Duty", "Percent"), sv("oops", "Power.Active.Import", "W")]
        unknown = call.MeterValues(1, [{"timestamp": at(5), "sampledValue": odd}])
        await cp.call(unknown, skip_schema_validation=True)  # not a 1.6 measurand: kept anyway
        await cp.call(call.StatusNotification(1, "NoError", "Finishing", timestamp=at(6)))
        end = [sv("12600", "Energy.Active.Import.Register", "Wh", context="Transaction.End")]
        data = [{"timestamp": at(7), "sampledValue": end}]
        await cp.call(call.StopTransaction(12_600, at(7), tid, transaction_data=data))
        await cp.call(call.StatusNotification(1, "NoError", "Available"))

    boot_capture, *c = got.captures
    assert (boot_capture.connector_id, boot_capture.evse_id, boot_capture.values) == (0, 0, {})
    assert boot_capture.charger_info == {"vendor": "V", "model": "M1"}
    assert [(x.ts - T0).total_seconds() for x in c[:9]] == [0, 1, 2, 3, 4, 5, 6, 7, 7]
    assert {(x.charger_id, x.connector_id, x.evse_id) for x in c} == {("CP-0042", 1, 1)}
    assert [x.status for x in c[:9]] == ["Preparing", "Preparing", "Charging", "Charging",
        "Charging", "Charging", "Finishing", "Finishing", "Finishing"]  # fmt: skip
    assert [x.transaction_id for x in c[:9]] == [None, str(tid), None, str(tid), str(tid), None,
        None, str(tid), str(tid)]  # fmt: skip
    assert c[0].values == {"error_code": 0.0}
    assert c[1].values == {"energy_wh": 12_345.0}
    assert c[3].values == {
        "energy_wh": 12_400.0, "power_w": 7_200.0, "current_l1_a": 10.5, "current_l2_a": 10.25,
        "current_l3_a": 10.75, "voltage_l1_v": 230.5, "voltage_l2_v": 229.5, "soc_pct": 64.0,
        "temperature_c": 41.5, "frequency_hz": 50.0,
    }  # fmt: skip
    assert c[4].values == {"energy_wh": 12_500.0, "power_w": 7_250.0}
    assert c[5].values == {"vendor_pilot_duty_pct": 53.5, "invalid_samples": 1.0}
    assert c[7].values == c[8].values == {"energy_wh": 12_600.0}
    assert c[9].status == "Available"
    assert c[9].values == {"error_code": 0.0}
    assert [x.tx_event for x in c] == [None, "started"] + [None] * 6 + ["ended", None]
    assert c[8].stop_reason == "Local"  # none given: OCPP 1.6's default
    assert len(c) == 10
    assert cs.counters.readings == 11
    assert cs.counters.call_errors == 0


async def test_answers_wait_until_the_agent_stored_the_readings(tmp_path: Path) -> None:
    """A charger deletes queued meter values when answered: the answer must come only after the
    consumer asked for the next batch (i.e. stored this one)."""
    settings = OcppSettings(port=0, state_path=tmp_path / "s.json")
    async with asyncio.timeout(20), CentralSystem(settings) as cs:
        batches = cs.captures()
        async with charger(cs.port, "CP-1") as cp:
            sample = [{"timestamp": at(0), "sampledValue": [sv("5", "Power.Active.Import", "W")]}]
            pending = asyncio.create_task(cp.call(call.MeterValues(2, sample)))
            batch = await anext(batches)
            assert [b.values for b in batch] == [{"power_w": 5.0}]
            await asyncio.sleep(0.3)
            assert not pending.done(), "answered before the batch was stored"
            nxt = asyncio.create_task(anext(batches))  # 'stored': ask for more
            await asyncio.wait_for(pending, 5)
            nxt.cancel()
        await batches.aclose()


async def _raw(ws: ClientConnection, frame: str) -> list[Any]:
    await ws.send(frame)
    answer = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(answer, list)
    return answer


async def test_malformed_frames_and_unknown_actions_get_callerrors(tmp_path: Path) -> None:
    """Every bad request is answered with the OCPP 1.6 CALLERROR for its fault and the
    connection keeps working afterwards."""
    cases = [
        ("this is not json", ["-1", "FormationViolation"]),
        ('{"an": "object"}', ["-1", "FormationViolation"]),
        ('[2, "u1", "Heartbeat"]', ["u1", "FormationViolation"]),
        ('[2, "u2", "Heartbeat", []]', ["u2", "FormationViolation"]),
        ('[7, "u3", "Heartbeat", {}]', ["u3", "FormationViolation"]),
        ('[2, "u4", "FlyToTheMoon", {}]', ["u4", "NotSupported"]),
        ('[2, "u5", "ReserveNow", {}]', ["u5", "NotImplemented"]),
        ('[2, "u6", "BootNotification", {"chargePointVendor": "V"}]', ["u6", "ProtocolError"]),
        (
            '[2, "u7", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M",'
            ' "bogus": 1}]',
            ["u7", "FormationViolation"],
        ),
        (
            '[2, "u8", "MeterValues", {"connectorId": 1, "meterValue": []}]',
            ["u8", "OccurenceConstraintViolation"],
        ),
        (
            '[2, "u9", "MeterValues", {"connectorId": "1", "meterValue": [{"timestamp": "'
            + at(0)
            + '", "sampledValue": [{"value": "1"}]}]}]',
            ["u9", "TypeConstraintViolation"],
        ),
        (
            '[2, "u10", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,'
            ' "timestamp": "yesterday"}]',
            ["u10", "PropertyConstraintViolation"],
        ),
    ]
    async with asyncio.timeout(30), central(tmp_path) as (cs, got):
        url = f"ws://127.0.0.1:{cs.port}/CP-7"
        async with connect(url, subprotocols=OCPP16) as ws:
            for frame, (unique_id, code) in cases:
                answer = await _raw(ws, frame)
                assert answer[:3] == [4, unique_id, code], frame
                assert isinstance(answer[3], str)
                assert isinstance(answer[4], dict)
            assert (await _raw(ws, '[2, "ok", "Heartbeat", {}]'))[:2] == [3, "ok"]
            data = await _raw(ws, '[2, "dt", "DataTransfer", {"vendorId": "acme"}]')
            assert data == [3, "dt", {"status": "UnknownVendorId"}]
            await ws.send('[3, "nobody-asked", {}]')  # an answer to nothing: ignored
            assert (await _raw(ws, '[2, "ok2", "Heartbeat", {}]'))[:2] == [3, "ok2"]
        assert got.captures == []
        assert cs.counters.call_errors == len(cases)


async def test_handshake_refuses_bad_ids_and_missing_subprotocol(tmp_path: Path) -> None:
    """Only ``.../<allowed id>`` with subprotocol ocpp1.6 is accepted."""
    async with asyncio.timeout(20), central(tmp_path) as (cs, _):
        base = f"ws://127.0.0.1:{cs.port}"
        for path in ("/ocpp/", "/ocpp/bad%20id", "/ocpp/" + "x" * 65, "/ocpp/a%2Fb"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(base + path, subprotocols=OCPP16):
                    pass
            assert refused.value.response.status_code == 404, path
        with pytest.raises(InvalidStatus) as no_sub:
            async with connect(base + "/ocpp/CP-1"):
                pass
        assert no_sub.value.response.status_code == 400
        async with connect(base + "/ocpp/CP-1?token=x", subprotocols=OCPP16) as ws:
            assert ws.subprotocol == "ocpp1.6"
        assert cs.counters.refused == 4


async def test_reconnect_keeps_state(tmp_path: Path) -> None:
    """A charger that reconnects (same id) after its connection closed finds its connector
    status and its open transaction, so StopTransaction still finds the connector."""
    async with asyncio.timeout(30), central(tmp_path) as (cs, got):
        async with charger(cs.port, "CP-9") as first:
            await first.call(call.StatusNotification(2, "NoError", "Charging", timestamp=at(0)))
            start = await first.call(call.StartTransaction(2, "T", 100, at(1)))
        async with charger(cs.port, "CP-9") as second:
            await second.call(call.StopTransaction(150, at(2), start.transaction_id))
        stop = got.captures[-1]
        assert (stop.connector_id, stop.status, stop.values) == (
            2,
            "Charging",
            {"energy_wh": 150.0},
        )
        assert stop.transaction_id == str(start.transaction_id)


async def test_transaction_ids_are_unique_across_restarts(tmp_path: Path) -> None:
    """Ids come from a persisted counter: a restarted gateway never hands out an id twice."""
    ids = []
    for _ in range(3):
        async with (
            asyncio.timeout(20),
            central(tmp_path) as (cs, _),
            charger(cs.port, "CP-2") as cp,
        ):
            for _ in range(2):
                ids.append((await cp.call(call.StartTransaction(1, "T", 0, at(0)))).transaction_id)
    assert len(set(ids)) == 6
    assert ids == sorted(ids)


async def test_ocpp_source_serves_until_closed(tmp_path: Path) -> None:
    """``ocpp_source`` (what the agent iterates) listens on its port and yields; closing it before
    the batch is stored answers the waiting charger with a CALLERROR (it keeps its data and
    resends), and the listener is gone."""
    settings = OcppSettings(port=free_port(), state_path=tmp_path / "s.json")
    source = ocpp_source(settings)
    first = asyncio.ensure_future(anext(source))
    async with asyncio.timeout(20):
        for _ in range(200):  # the listener starts when the source is first iterated
            if port_open("127.0.0.1", settings.port, 0.2):
                break
            await asyncio.sleep(0.05)
        async with charger(settings.port, "CP-3") as cp:
            sample = [{"timestamp": at(0), "sampledValue": [sv("1", "Voltage", "V")]}]
            waiting = asyncio.create_task(cp.call(call.MeterValues(0, sample), suppress=False))
            batch = await first
            assert batch[0].values == {"voltage_v": 1.0}
            assert (batch[0].connector_id, batch[0].evse_id) == (0, 0)
            await source.aclose()  # not stored: the charger must not be told it was
            with pytest.raises(InternalError):
                await waiting
        assert not port_open("127.0.0.1", settings.port, 0.2)


async def test_wss_with_the_dev_pki(tmp_path: Path, pki: TestPki) -> None:
    """With cert_file/key_file the endpoint speaks wss:// (TLS 1.2+), verified against our CA."""
    settings = OcppSettings(
        port=0,
        state_path=tmp_path / "s.json",
        cert_file=pki.pki.server_cert,
        key_file=pki.pki.server_key,
    )
    tls = client_context(pki.ca_file, None, None)
    async with asyncio.timeout(20), CentralSystem(settings) as cs:
        collector = Collector(cs.captures())  # the boot is a reading: answered once stored
        url = f"wss://127.0.0.1:{cs.port}/ocpp/CP-TLS"
        async with connect(url, subprotocols=OCPP16, ssl=tls) as ws:
            answer = await _raw(ws, '[2, "b", "BootNotification", {"chargePointVendor": "V", '
                                '"chargePointModel": "M"}]')  # fmt: skip
            assert answer[:2] == [3, "b"]
            assert answer[2]["status"] == "Accepted"
        with pytest.raises(InvalidMessage):  # plain ws:// to a TLS port: no handshake
            async with connect(f"ws://127.0.0.1:{cs.port}/ocpp/CP-1", subprotocols=OCPP16):
                pass
        collector.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector.task


async def test_an_oversized_frame_closes_only_that_connection(tmp_path: Path) -> None:
    """A frame over MAX_MESSAGE_BYTES closes that charger's socket (1009); others go on."""
    settings = OcppSettings(port=0, state_path=tmp_path / "s.json", max_message_bytes=4096)
    async with asyncio.timeout(20), CentralSystem(settings) as cs:
        base = f"ws://127.0.0.1:{cs.port}/ocpp"
        async with connect(f"{base}/CP-A", subprotocols=OCPP16) as calm:
            async with connect(f"{base}/CP-B", subprotocols=OCPP16) as big:
                await big.send('[2, "x", "DataTransfer", {"vendorId": "' + "v" * 5000 + '"}]')
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(big.recv(), 5)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1009
            assert (await _raw(calm, '[2, "h", "Heartbeat", {}]'))[:2] == [3, "h"]


async def test_transactions_and_the_boot_reach_the_outbox_without_the_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the agent's capture into a real outbox: the boot reading with charger_info; per
    transaction the started reading (meterStart, the tag's salted hash) and the ended one
    (meterStop, the stop reason, the hash when the stop names the tag); a Transaction.Begin
    MeterValues at the meterStart's ts keeps its own reading (1 ms later). The tag itself is in
    no reading, no file of the agent and no log record of the agent, even at DEBUG."""
    tag, salt = "04A1B2C3D4E5F6", "one-salt-for-the-whole-fleet"
    settings = EdgeSettings(
        gateway_id="gw-1",
        outbox_path=tmp_path / "o.sqlite3",
        ocpp=OcppSettings(port=0, state_path=tmp_path / "ocpp.json", id_tag_salt=salt),
    )
    client = cast(AsyncMqttClient, SimpleNamespace(connected=False))  # capture publishes nothing
    digest = hmac.new(salt.encode(), tag.encode(), hashlib.sha256).hexdigest()[:32]
    with Outbox(settings.outbox_path) as box, caplog.at_level(logging.DEBUG):
        async with asyncio.timeout(30), CentralSystem(settings.ocpp) as cs:
            capture = asyncio.create_task(EdgeAgent(settings, box, client).capture(cs.captures()))
            async with charger(cs.port, "CP-77") as cp:
                await cp.call(
                    call.BootNotification(
                        charge_point_model="Homeline 22T",
                        charge_point_vendor="Voltaro",
                        charge_point_serial_number="VLT-000123",
                        charge_box_serial_number="BOX-9",
                        firmware_version="2.3.1\u00e9\t",
                    )
                )
                await cp.call(call.Authorize(tag))
                tid = (await cp.call(call.StartTransaction(1, tag, 1_000, at(1)))).transaction_id
                begin = [sv("1000", "Energy.Active.Import.Register", "Wh",
                            context="Transaction.Begin")]  # fmt: skip
                mid = [
                    sv("1500", "Energy.Active.Import.Register", "Wh"),
                    sv("7000", "Power.Active.Import", "W"),
                ]
                await cp.call(
                    call.MeterValues(1, [{"timestamp": at(1), "sampledValue": begin}], tid)
                )
                await cp.call(call.MeterValues(1, [{"timestamp": at(3), "sampledValue": mid}], tid))
                end = [sv("2400", "Energy.Active.Import.Register", "Wh", context="Transaction.End")]
                await cp.call(
                    call.StopTransaction(
                        2_400, at(5), tid, id_tag=tag, reason="EVDisconnected",
                        transaction_data=[{"timestamp": at(5), "sampledValue": end}],
                    )
                )  # fmt: skip
                second = (await cp.call(call.StartTransaction(2, tag, 50, at(6)))).transaction_id
                await cp.call(call.StopTransaction(80, at(8), second))
            capture.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await capture
        rows = box.oldest(100, 1 << 20)
        batch = ReadingBatch.model_validate_json(build_payload("gw-1", rows, box.epoch))
    got = [orjson.loads(r.reading_json()) for r in rows]
    assert len(got) == len(batch.readings) == 8
    boot, start, begin_mv, mid_mv, end_mv, stop, start2, stop2 = got
    assert (boot["connector_id"], boot["evse_id"], boot["values"]) == (0, 0, {})
    assert boot["charger_info"] == {
        "vendor": "Voltaro", "model": "Homeline 22T", "serial": "VLT-000123", "firmware": "2.3.1e",
    }  # fmt: skip
    assert (start["tx_event"], start["transaction_id"], start["values"]) == (
        "started",
        str(tid),
        {"energy_wh": 1000.0},
    )
    assert start["id_tag_hash"] == digest != tag.lower()
    assert start["ts"] == "2026-05-01T12:00:01.000Z"
    assert (begin_mv["ts"], begin_mv["values"]) == (
        "2026-05-01T12:00:01.001Z",
        {"energy_wh": 1000.0},
    )
    assert "tx_event" not in begin_mv
    assert mid_mv["values"] == {"energy_wh": 1500.0, "power_w": 7000.0}
    assert (end_mv["transaction_id"], end_mv["ts"]) == (str(tid), "2026-05-01T12:00:05.000Z")
    assert "tx_event" not in end_mv
    assert "id_tag_hash" not in end_mv
    assert (stop["tx_event"], stop["stop_reason"], stop["id_tag_hash"]) == (
        "ended",
        "EVDisconnected",
        digest,
    )
    assert (stop["values"], stop["ts"]) == ({"energy_wh": 2400.0}, "2026-05-01T12:00:05.001Z")
    assert stop["values"]["energy_wh"] - start["values"]["energy_wh"] == 1400.0
    assert (start2["connector_id"], start2["id_tag_hash"]) == (2, digest)
    assert (stop2["tx_event"], stop2["stop_reason"], stop2["transaction_id"]) == (
        "ended",
        "Local",
        str(second),
    )
    assert "id_tag_hash" not in stop2  # the stop named no tag
    files = await asyncio.to_thread(lambda: {p.name: p.read_bytes() for p in tmp_path.iterdir()})
    assert {"o.sqlite3", "ocpp.json"} <= set(files)
    assert not [name for name, data in files.items() if tag.encode() in data]
    charger_side = ("ocpp", "websockets.client")  # the test's ChargePoint logs its own frames
    ours = [r for r in caplog.records if r.name not in charger_side]
    assert any("receive message" in r.getMessage() for r in ours)  # frames logged at DEBUG ...
    assert not [r.getMessage() for r in ours if tag in r.getMessage()]  # ... without the tag
    assert {r.name for r in ours} >= {"edge_agent.ocpp.session", "edge_agent.ocpp.server"}
