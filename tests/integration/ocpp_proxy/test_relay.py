"""Proxy mode between two real OCPP 1.6J peers: the ``ocpp`` library's ChargePoint as the
charger and the library's central-system role as the operator's CSMS, over real WebSockets on
loopback, through the gateway's ``CentralSystem`` in ``mode=proxy`` (the captures it yields are
what the agent stores)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from edge_agent.ocpp.lib import ChargePoint, call, call_result, on
from telemetry_stack.servers import free_port
from tests.support.ocpp_csms import Recorded, csms, proxy_gateway
from tests.support.ocpp_peer import charge_point
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
