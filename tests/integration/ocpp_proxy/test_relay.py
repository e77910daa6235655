"""Proxy mode between two real OCPP 1.6J peers: the ``ocpp`` library's ChargePoint as the
charger and the library's central-system role as the operator's CSMS, over real WebSockets on
loopback, through the gateway's ``CentralSystem`` in ``mode=proxy`` (the captures it yields are
what the agent stores)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from edge_agent.ocpp.lib import (
    ChargePoint,
    ChargePoint201,
    call,
    call201,
    call_result,
    call_result201,
    on,
)
from edge_agent.ocpp.offline import OfflineStore
from telemetry_stack.servers import free_port
from tests.support.ocpp_csms import Recorded, csms, proxy_gateway
from tests.support.ocpp_peer import OCPP16, charge_point
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def energy(wh: str) -> list[dict[str, Any]]:
    sample = {"value": wh, "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    return [{"timestamp": at(3), "sampledValue": [sample]}]


class Charger(ChargePoint):
    """The charger: answers the CSMS's remote start and stop."""

    @on("RemoteStartTransaction")
    async def remote_start(self, id_tag: str, **_: Any) -> object:
        return call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    async def remote_stop(self, transaction_id: int) -> object:
        self.stopped = transaction_id
        return call_result.RemoteStopTransaction(status="Accepted")


async def until(what: str, check: Callable[[], bool]) -> None:
    await asyncio.to_thread(wait_until, what, check, 15)


async def test_every_frame_is_relayed_unchanged_in_order_both_ways(tmp_path: Path) -> None:
    """Boot, heartbeat, status, a transaction with meter values, a CSMS-initiated
    RemoteStartTransaction and its answer: what one peer sent, the other received, equal as
    parsed JSON and in the same order, both ways; the telemetry is captured on the way with the
    CSMS's transaction id, and the gateway answered nothing itself. The frames are even the
    same strings (no transaction id needed mapping)."""
    port = free_port()
    recorders: list[Recorded] = []

    def record(ws: Any) -> Recorded:
        recorders.append(Recorded(ws))
        return recorders[-1]

    async with (
        asyncio.timeout(60),
        csms(port, first_tid=4242) as upstream,
        proxy_gateway(tmp_path, port) as (cs, got),
        charge_point(cs.port, "CP-P1", cls=Charger, wrap=record) as cp,
    ):
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert (boot.status, boot.interval) == ("Accepted", 60)  # the CSMS's answer, not ours
        await cp.call(call.Heartbeat())
        await cp.call(call.StatusNotification(1, "NoError", "Preparing", timestamp=at(0)))
        start = await cp.call(call.StartTransaction(1, "TAG-1", 1_000, at(1)))
        assert start.transaction_id == 4242
        await cp.call(call.MeterValues(1, energy("1500"), transaction_id=4242))
        await cp.call(call.StopTransaction(2_000, at(5), 4242, id_tag="TAG-1"))
        peer = upstream.peers["CP-P1"][0]
        remote = await peer.call(call.RemoteStartTransaction(id_tag="TAG-2", connector_id=1))
        assert remote.status == "Accepted"  # reached the charger, its answer came back
        await until("the CSMS saw everything", lambda: len(peer.recorded.received) >= 7)

    charger = recorders[0]
    seen = upstream.frames("CP-P1")
    assert charger.sent == seen.received
    assert seen.sent == charger.received
    assert charger.raw_sent == seen.raw_received  # the same strings, byte for byte
    assert seen.raw_sent == charger.raw_received
    actions = [f[2] for f in charger.sent if f[0] == 2]
    assert actions == ["BootNotification", "Heartbeat", "StatusNotification",
        "StartTransaction", "MeterValues", "StopTransaction"]  # fmt: skip
    assert [f[2] for f in seen.sent if f[0] == 2] == ["RemoteStartTransaction"]
    events = [(c.tx_event, c.transaction_id, c.values) for c in got.captures if c.connector_id]
    assert events == [
        (None, None, {"error_code": 0.0}),
        ("started", "4242", {"energy_wh": 1000.0}),
        (None, "4242", {"energy_wh": 1500.0}),
        ("ended", "4242", {"energy_wh": 2000.0}),
    ]
    assert got.captures[0].charger_info == {"vendor": "V", "model": "M"}
    assert all(c.id_tag_hash != "TAG-1" for c in got.captures)


async def test_csms_down_for_a_whole_transaction_then_replayed_once(tmp_path: Path) -> None:
    """The CSMS is unreachable while a transaction starts, meters and stops: the charger stays
    connected, gets a gateway transaction id (negative) and its answers; other calls get
    CALLERROR InternalError. When the CSMS comes up it receives Start, MeterValues and Stop once,
    in order, with its own transaction id put in; a later RemoteStopTransaction naming the
    CSMS's id reaches the charger with the charger's id. The readings carry the charger's id."""
    port = free_port()  # nothing listens there yet
    async with (
        asyncio.timeout(60),
        proxy_gateway(tmp_path, port) as (cs, got),
        charge_point(cs.port, "CP-P2", cls=Charger) as cp,
    ):
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot is None  # CALLERROR (the library logs it and returns None)
        start = await cp.call(call.StartTransaction(1, "TAG-1", 1_000, at(1)))
        tid = start.transaction_id
        assert tid < 0
        assert start.id_tag_info == {"status": "Accepted"}
        assert await cp.call(call.MeterValues(1, energy("1500"), transaction_id=tid)) is not None
        stop = await cp.call(call.StopTransaction(2_000, at(5), tid))
        assert stop is not None
        async with csms(port, first_tid=77) as upstream:
            await until(
                "the CSMS got the stop", lambda: len(upstream.frames("CP-P2").received) >= 3
            )
            await asyncio.sleep(0.3)  # anything replayed twice would be in by now
            got_calls = upstream.frames("CP-P2").calls_received()
            assert [a for a, _ in got_calls] == [
                "StartTransaction",
                "MeterValues",
                "StopTransaction",
            ]
            assert [p.get("transactionId") for _, p in got_calls] == [None, 77, 77]
            assert got_calls[0][1]["idTag"] == "TAG-1"  # forwarded as the charger sent it
            peer = upstream.peers["CP-P2"][-1]
            answer = await peer.call(call.RemoteStopTransaction(transaction_id=77))
            assert answer.status == "Accepted"
            assert cp.stopped == tid
            live = await cp.call(call.MeterValues(1, energy("2100"), transaction_id=tid))
            assert live is not None
            await until("the live frame arrived", lambda: len(peer.recorded.received) >= 5)
            assert peer.recorded.calls_received()[-1][1]["transactionId"] == 77
    tx = [(c.tx_event, c.transaction_id) for c in got.captures if c.transaction_id]
    assert tx == [("started", str(tid)), (None, str(tid)), ("ended", str(tid)), (None, str(tid))]
    assert got.captures[0].charger_info == {"vendor": "V", "model": "M"}  # tapped though refused


async def test_a_full_offline_queue_refuses_and_the_charger_keeps_the_message(
    tmp_path: Path,
) -> None:
    """The gateway's offline queue holds at most OFFLINE_MAX_QUEUED messages per charger (the
    disk is shared with the outbox): beyond it a transaction message gets CALLERROR, so the
    charger keeps it in its own queue and sends it again later, and nothing the gateway
    answered is lost. Its readings are still tapped into the outbox."""
    port = free_port()  # the CSMS is down throughout
    async with (
        asyncio.timeout(60),
        proxy_gateway(tmp_path, port, offline_max_queued=2) as (cs, got),
        charge_point(cs.port, "CP-FULL", cls=Charger) as cp,
    ):
        start = await cp.call(call.StartTransaction(1, "TAG-1", 1_000, at(1)))
        tid = start.transaction_id
        assert await cp.call(call.MeterValues(1, energy("1500"), transaction_id=tid)) is not None
        refused = await cp.call(call.MeterValues(1, energy("1600"), transaction_id=tid))
        assert refused is None  # CALLERROR (the library logs it and returns None)
        assert cs.counters.call_errors >= 1
        await until("the refused reading tapped", lambda: len(got.captures) >= 3)
    store = OfflineStore(tmp_path / "ocpp-state.proxy.sqlite3")
    try:
        assert [q.action for q in store.pending("CP-FULL")] == ["StartTransaction", "MeterValues"]
    finally:
        store.close()


async def test_a_charger_the_csms_refuses_is_refused_with_its_status(tmp_path: Path) -> None:
    """A CSMS that answers the handshake with HTTP 404 (an unknown charger) has the charger
    refused with 404 too, not accepted into offline mode."""
    port = free_port()

    def unknown(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.NOT_FOUND, "unknown charger\n")

    async with (
        asyncio.timeout(30),
        serve(lambda ws: ws.wait_closed(), "127.0.0.1", port, process_request=unknown),
        proxy_gateway(tmp_path, port) as (cs, _),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with charge_point(cs.port, "CP-P3"):
                pass
    assert refused.value.response.status_code == HTTPStatus.NOT_FOUND


async def test_csms_lost_mid_session_then_back(tmp_path: Path) -> None:
    """The CSMS goes away while the charger is connected: the charger stays connected, its
    StartTransaction is answered by the gateway; the CSMS comes back (the gateway reconnects on
    its own) and gets the queued StartTransaction before the next live frame."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        proxy_gateway(tmp_path, port) as (cs, got),
        contextlib.AsyncExitStack() as charger_side,
    ):
        first_csms = contextlib.AsyncExitStack()
        first = await first_csms.enter_async_context(csms(port, first_tid=900))
        cp = await charger_side.enter_async_context(charge_point(cs.port, "CP-P4", cls=Charger))
        await cp.call(call.Heartbeat())
        assert first.frames("CP-P4").calls_received() == [("Heartbeat", {})]
        await first_csms.aclose()  # the CSMS is gone; the charger stays connected
        start = await cp.call(call.StartTransaction(1, "TAG-4", 10, at(1)))
        tid = start.transaction_id
        assert tid < 0
        async with csms(port, first_tid=950) as second:
            await until("replayed", lambda: len(second.frames("CP-P4").received) >= 1)
            await cp.call(call.MeterValues(1, energy("20"), transaction_id=tid))
            await until("live", lambda: len(second.frames("CP-P4").received) >= 2)
            calls = second.frames("CP-P4").calls_received()
    assert [(a, p.get("transactionId")) for a, p in calls] == [
        ("StartTransaction", None),
        ("MeterValues", 950),
    ]
    assert [c.transaction_id for c in got.captures] == [str(tid)] * 2


async def test_a_handshake_that_fails_after_the_csms_opened_closes_the_csms_connection(
    tmp_path: Path,
) -> None:
    """The gateway opens the CSMS connection before it answers the charger. A handshake that
    then fails (here: a WebSocket version the gateway refuses with 400) never reaches the
    relay; the CSMS connection opened for it is closed, not left holding the charger's id at
    the CSMS while no charger is there."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        csms(port) as upstream,
        proxy_gateway(tmp_path, port) as (cs, _),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", cs.port)
        writer.write(
            b"GET /ocpp/CP-GHOST HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 12\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
        )
        await writer.drain()
        status = await reader.readline()
        writer.close()
        assert status.startswith(b"HTTP/1.1 400"), status
        await until("the CSMS saw the charger", lambda: "CP-GHOST" in upstream.peers)
        ghost = upstream.peers["CP-GHOST"][0].recorded.ws
        await until("the CSMS connection closed", lambda: ghost.state.name == "CLOSED")
        assert not cs._upstreams


@contextlib.asynccontextmanager
async def slow_csms(port: int, delay_s: float) -> AsyncIterator[list[ServerConnection]]:
    """A CSMS that takes ``delay_s`` to accept a connection, then holds it; yields the
    connections it accepted."""
    opened: list[ServerConnection] = []

    async def slow(connection: ServerConnection, request: Request) -> None:
        await asyncio.sleep(delay_s)

    async def handler(ws: ServerConnection) -> None:
        opened.append(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", port, subprotocols=OCPP16, process_request=slow):
        yield opened


async def test_a_charger_that_gives_up_while_the_csms_answers_slowly_leaves_no_csms_connection(
    tmp_path: Path,
) -> None:
    """The CSMS takes a second to accept; the charger gives up its handshake before that. The
    CSMS connection the gateway then gets is closed at once, not kept for nobody."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        slow_csms(port, 1.0) as opened,
        proxy_gateway(tmp_path, port) as (cs, _),
    ):
        with pytest.raises(TimeoutError):
            async with connect(
                f"ws://127.0.0.1:{cs.port}/ocpp/CP-GONE", subprotocols=OCPP16, open_timeout=0.3
            ):
                pass
        await until("the CSMS accepted", lambda: bool(opened))
        await until("the CSMS connection closed", lambda: opened[0].state.name == "CLOSED")
        assert not cs._upstreams


async def test_a_second_connection_refused_after_its_handshake_leaves_no_csms_connection(
    tmp_path: Path,
) -> None:
    """Two unauthenticated connections for one charger id at the same moment both pass the
    handshake (neither is connected yet), so the gateway opens the CSMS twice; the one that
    comes second is then closed as a hijack. Its CSMS connection is closed with it: the CSMS
    keeps exactly one connection for the charger, the one that relays."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        slow_csms(port, 0.5) as opened,  # both handshakes pass the gateway's check meanwhile
        proxy_gateway(tmp_path, port) as (cs, _),
    ):
        url = f"ws://127.0.0.1:{cs.port}/ocpp/CP-DUP"
        chargers = await asyncio.gather(*(connect(url, subprotocols=OCPP16) for _ in range(2)))
        try:
            await until("both CSMS connections", lambda: len(opened) == 2)
            await until(
                "one charger connection closed",
                lambda: [c.state.name for c in chargers].count("CLOSED") == 1,
            )
            await until(
                "one CSMS connection left",
                lambda: [ws.state.name for ws in opened].count("OPEN") == 1,
            )
            assert cs.counters.hijacks_refused == 1
        finally:
            for charger in chargers:
                await charger.close()


async def test_an_unexpected_fault_in_the_csms_link_is_logged_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault of an unexpected kind while the queue is replayed (here the queue's disk fails
    once as the CSMS's transaction id is stored) is logged with its traceback and the CSMS link
    is retried: before, it ended the relay's CSMS task quietly, and the charger was answered
    offline (queued or CALLERROR) for as long as it stayed connected, the CSMS up or not."""
    faults = [sqlite3.OperationalError("disk I/O error")]
    store_map = OfflineStore.map_transaction

    def failing_once(self: OfflineStore, *args: Any) -> None:
        if faults:
            raise faults.pop()
        store_map(self, *args)

    monkeypatch.setattr(OfflineStore, "map_transaction", failing_once)
    port = free_port()  # nothing listens there yet
    async with (
        asyncio.timeout(60),
        proxy_gateway(tmp_path, port) as (cs, _),
        charge_point(cs.port, "CP-P9", cls=Charger) as cp,
    ):
        start = await cp.call(call.StartTransaction(1, "TAG-1", 1_000, at(1)))
        assert start.transaction_id < 0
        async with csms(port, first_tid=77):
            await until("the fault", lambda: not faults)
            answer = None
            for _ in range(100):  # bounded: the link is retried within upstream_retry_max_s
                answer = await cp.call(call.Heartbeat())
                if answer is not None:
                    break
                await asyncio.sleep(0.1)
            assert answer is not None, "the CSMS link never came back"
    assert "disk I/O error" in caplog.text


async def test_max_chargers_holds_for_handshakes_at_the_same_moment(tmp_path: Path) -> None:
    """max_chargers bounds the chargers (and CSMS connections) the gateway holds: handshakes
    that arrive together, while earlier ones still wait for the CSMS, count as well. Six at
    once with room for two: two connect, four get 503, the CSMS sees two."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        slow_csms(port, 0.5) as opened,
        proxy_gateway(tmp_path, port, max_chargers=2) as (cs, _),
    ):

        async def attempt(i: int) -> ClientConnection | int:
            try:
                return await connect(f"ws://127.0.0.1:{cs.port}/ocpp/CP-M{i}", subprotocols=OCPP16)
            except InvalidStatus as exc:
                return exc.response.status_code

        outcomes = await asyncio.gather(*(attempt(i) for i in range(6)))
        chargers = [o for o in outcomes if not isinstance(o, int)]
        try:
            assert sorted(o for o in outcomes if isinstance(o, int)) == [503] * 4
            assert len(chargers) == 2
            assert len(opened) == 2
        finally:
            for charger in chargers:
                await charger.close()


# -- the same scenarios in OCPP 2.0.1 -------------------------------------------------------------

TOKEN = {"idToken": "04C0FFEE", "type": "ISO14443"}


def energy201(wh: float, at_s: int, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
    sample = {
        "value": wh,
        "measurand": "Energy.Active.Import.Register",
        "unitOfMeasure": {"unit": "Wh"},
        "context": context,
    }
    return [{"timestamp": at(at_s), "sampledValue": [sample]}]


def tx_event(kind: str, seq: int, tx: str, **more: Any) -> Any:
    """A TransactionEvent of transaction ``tx``: Started (1000 Wh, on EVSE 1, with a token),
    Updated (1500 Wh), Ended (2000 Wh)."""
    wh, context, reason = {
        "Started": (1000, "Transaction.Begin", "CablePluggedIn"),
        "Updated": (1500, "Sample.Periodic", "MeterValuePeriodic"),
        "Ended": (2000, "Transaction.End", "EVCommunicationLost"),
    }[kind]
    info: dict[str, Any] = {"transactionId": tx}
    if kind == "Started":
        more |= {"evse": {"id": 1, "connectorId": 1}, "id_token": TOKEN}
    if kind == "Ended":
        info["stoppedReason"] = "EVDisconnected"
    return call201.TransactionEvent(
        kind, at(seq + 1), reason, seq, info, meter_value=energy201(wh, seq + 1, context), **more
    )


class Charger201(ChargePoint201):
    """A 2.0.1 charger: accepts the CSMS's remote start."""

    @on("RequestStartTransaction")
    async def remote_start(self, id_token: dict[str, Any], remote_start_id: int, **_: Any) -> Any:
        self.remote_start_id = remote_start_id
        return call_result201.RequestStartTransaction(status="Accepted")


async def test_2_0_1_every_frame_is_relayed_unchanged_in_order_both_ways(tmp_path: Path) -> None:
    """2.0.1 through the proxy: boot, heartbeat, status, a transaction (Started, Updated,
    Ended), a MeterValues, and a CSMS-initiated RequestStartTransaction and its answer: the
    same strings in the same order both ways; the telemetry captured on the way (the
    transaction's start, meter values and end on EVSE 1)."""
    port = free_port()
    recorders: list[Recorded] = []

    def record(ws: Any) -> Recorded:
        recorders.append(Recorded(ws))
        return recorders[-1]

    async with (
        asyncio.timeout(60),
        csms(port) as upstream,
        proxy_gateway(tmp_path, port) as (cs, got),
        charge_point(cs.port, "CS-P1", version="2.0.1", cls=Charger201, wrap=record) as cp,
    ):
        station = {"vendorName": "Acme", "model": "AC-201"}
        boot = await cp.call(call201.BootNotification(station, "PowerUp"))
        assert (boot.status, boot.interval) == ("Accepted", 60)  # the CSMS's answer
        await cp.call(call201.Heartbeat())
        await cp.call(call201.StatusNotification(at(0), "Occupied", 1, 1))
        started = await cp.call(tx_event("Started", 0, "tx-1"))
        assert started.id_token_info == {"status": "Accepted"}
        await cp.call(tx_event("Updated", 1, "tx-1"))
        await cp.call(tx_event("Ended", 2, "tx-1"))
        await cp.call(call201.MeterValues(1, energy201(2000, 4, "Sample.Clock")))
        peer = upstream.peers["CS-P1"][0]
        remote = await peer.call(call201.RequestStartTransaction(TOKEN, remote_start_id=7))
        assert remote.status == "Accepted"  # reached the charger, its answer came back
        assert cp.remote_start_id == 7
        await until("the CSMS saw everything", lambda: len(peer.recorded.received) >= 8)

    charger = recorders[0]
    seen = upstream.frames("CS-P1")
    assert charger.raw_sent == seen.raw_received  # the same strings, in order
    assert seen.raw_sent == charger.raw_received
    assert charger.sent == seen.received
    assert [f[2] for f in charger.sent if f[0] == 2] == [
        "BootNotification", "Heartbeat", "StatusNotification", "TransactionEvent",
        "TransactionEvent", "TransactionEvent", "MeterValues",
    ]  # fmt: skip
    assert [f[2] for f in seen.sent if f[0] == 2] == ["RequestStartTransaction"]
    tx = [
        (c.tx_event, c.transaction_id, c.evse_id, c.values.get("energy_wh")) for c in got.captures
    ]
    assert [t for t in tx if t[1]] == [
        ("started", "tx-1", 1, 1000.0),
        (None, "tx-1", 1, 1500.0),
        ("ended", "tx-1", 1, 2000.0),
    ]
    assert got.captures[0].charger_info == {"vendor": "Acme", "model": "AC-201"}
    assert all(
        c.id_tag_hash not in (None, TOKEN["idToken"])
        for c in got.captures
        if c.tx_event == "started"
    )


async def test_2_0_1_csms_down_for_a_whole_transaction_then_replayed_once(tmp_path: Path) -> None:
    """2.0.1, the CSMS unreachable for a transaction's whole life: the gateway answers the
    TransactionEvents (Started with ``idTokenInfo``), refuses the rest with InternalError;
    when the CSMS comes up it receives Started, Updated and Ended once, in order, exactly as
    the charger sent them (no id mapping in 2.0.1), then the live frames."""
    port = free_port()
    async with (
        asyncio.timeout(60),
        proxy_gateway(tmp_path, port) as (cs, got),
        charge_point(cs.port, "CS-P2", version="2.0.1") as cp,
    ):
        station = {"vendorName": "Acme", "model": "AC-201"}
        assert await cp.call(call201.BootNotification(station, "PowerUp")) is None  # CALLERROR
        sent = [tx_event("Started", 0, "tx-2"), tx_event("Updated", 1, "tx-2")]
        sent.append(tx_event("Ended", 2, "tx-2"))
        answers = [await cp.call(event) for event in sent]
        assert answers[0].id_token_info == {"status": "Accepted"}
        assert all(a is not None for a in answers)
        assert await cp.call(call201.MeterValues(1, energy201(2000, 4))) is None  # CALLERROR
        async with csms(port) as upstream:
            await until("replayed", lambda: len(upstream.frames("CS-P2").received) >= 3)
            await cp.call(call201.StatusNotification(at(5), "Available", 1, 1))
            await until("live", lambda: len(upstream.frames("CS-P2").received) >= 4)
            await asyncio.sleep(0.3)  # anything replayed twice would be in by now
            calls = upstream.frames("CS-P2").calls_received()
    assert [a for a, _ in calls] == ["TransactionEvent"] * 3 + ["StatusNotification"]
    assert [p["eventType"] for _, p in calls[:3]] == ["Started", "Updated", "Ended"]
    assert [p["seqNo"] for _, p in calls[:3]] == [0, 1, 2]
    assert calls[0][1]["idToken"] == TOKEN  # as the charger sent it
    assert {p["transactionInfo"]["transactionId"] for _, p in calls[:3]} == {"tx-2"}
    tx = [(c.tx_event, c.transaction_id, c.evse_id) for c in got.captures if c.transaction_id]
    assert tx == [("started", "tx-2", 1), (None, "tx-2", 1), ("ended", "tx-2", 1)]
