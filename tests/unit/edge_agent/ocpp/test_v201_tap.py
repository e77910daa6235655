"""Tap201, the proxy's FrameTap for OCPP 2.0.1 (pure, no sockets): raw camelCase frames give
the same captures as the local-mode session; a payload the models refuse gives none (the frame
is still the CSMS's to answer) and does not log the token; CALLRESULTs carry no telemetry."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.capture import Capture
from edge_agent.ocpp.idtags import hash_id_tag
from edge_agent.ocpp.session import Counters, Shared
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.transactions import TransactionStore
from edge_agent.ocpp.translate import Translator
from edge_agent.ocpp.v201.session import ChargerSession201
from edge_agent.ocpp.v201.tap import FrameTap, Tap201

SALT = b"a-fleet-wide-salt-of-some-length"
TOKEN = "ABCDEF0123456789"
BOOTED_AT = datetime(2026, 5, 1, 11, 59, tzinfo=UTC)

#: A charger's telemetry frames over one transaction, as they are on the wire.
FRAMES: list[tuple[str, dict[str, Any]]] = [
    ("BootNotification", {"reason": "PowerUp", "chargingStation": {
        "vendorName": "Acme", "model": "AC-22", "serialNumber": "SN-7",
        "firmwareVersion": "4.1"}}),
    ("StatusNotification", {"timestamp": "2026-05-01T12:00:00Z",
                            "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
    ("TransactionEvent", {
        "eventType": "Started", "timestamp": "2026-05-01T12:00:01Z",
        "triggerReason": "CablePluggedIn", "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-77", "chargingState": "EVConnected"},
        "evse": {"id": 1, "connectorId": 1},
        "idToken": {"idToken": TOKEN, "type": "ISO14443"},
        "meterValue": [{"timestamp": "2026-05-01T12:00:01Z", "sampledValue": [
            {"value": 7.5, "context": "Transaction.Begin",
             "unitOfMeasure": {"unit": "kWh"}}]}]}),
    ("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": "2026-05-01T12:00:30Z",
        "sampledValue": [{"value": 11, "measurand": "Power.Active.Import",
                          "unitOfMeasure": {"unit": "W", "multiplier": 3}}]}]}),
    ("TransactionEvent", {
        "eventType": "Ended", "timestamp": "2026-05-01T12:01:00Z",
        "triggerReason": "StopAuthorized", "seqNo": 1,
        "transactionInfo": {"transactionId": "tx-77", "stoppedReason": "Remote"},
        "meterValue": [{"timestamp": "2026-05-01T12:01:00Z", "sampledValue": [
            {"value": 7700, "context": "Transaction.End"}]}]}),
]  # fmt: skip


def shared(tmp_path: Path, emit: Any = None) -> Shared:
    async def _discard(captures: list[Capture]) -> None:
        return None

    return Shared(
        OcppSettings(state_path=tmp_path / "s.json"),
        Translator(),
        TransactionStore(tmp_path / "s.json"),
        Counters(),
        emit or _discard,
        SALT,
    )


def test_the_tap_takes_what_the_local_session_takes(tmp_path: Path) -> None:
    """Every telemetry frame of a transaction, tapped raw: the readings (started with the
    token's hash and meter start 7500 Wh, the MeterValues reading inside the transaction, ended
    with the reason and 7700 Wh) -- and the CALLRESULTs add nothing."""
    tap: FrameTap = Tap201("CS-1", shared(tmp_path), clock=lambda: BOOTED_AT)
    got: list[Capture] = []
    for n, (action, payload) in enumerate(FRAMES):
        got += tap.on_call(f"m{n}", action, payload)
        assert tap.on_result(f"m{n}", action, payload, {}) == []
    boot, status, started, meter, ended = got
    assert boot.charger_info == {"vendor": "Acme", "model": "AC-22", "serial": "SN-7",
                                 "firmware": "4.1"}  # fmt: skip
    assert boot.ts == BOOTED_AT
    assert (status.status, status.transaction_id) == ("Occupied", None)
    assert (started.tx_event, started.values, started.status) == (
        "started", {"energy_wh": 7500.0}, "Preparing",
    )  # fmt: skip
    assert started.id_tag_hash == hash_id_tag(SALT, TOKEN)
    assert (meter.transaction_id, meter.values) == ("tx-77", {"power_w": 11_000.0})
    assert (ended.tx_event, ended.stop_reason, ended.values) == (
        "ended", "Remote", {"energy_wh": 7700.0},
    )  # fmt: skip
    assert (ended.evse_id, ended.connector_id, ended.transaction_id) == (1, 1, "tx-77")


async def test_the_tap_and_the_session_agree(tmp_path: Path) -> None:
    """The same frames through the local-mode session give the same captures as the tap."""
    stored: list[Capture] = []

    async def emit(captures: list[Capture]) -> None:
        stored.extend(captures)

    class Wire:
        async def send(self, message: str) -> None:
            return None

    session = ChargerSession201("CS-1", Wire(), shared(tmp_path, emit))
    for n, (action, payload) in enumerate(FRAMES):
        await session.route_message(orjson.dumps([2, f"m{n}", action, payload]))
    tap = Tap201("CS-1", shared(tmp_path))
    tapped = [c for n, (a, p) in enumerate(FRAMES) for c in tap.on_call(f"m{n}", a, p)]
    assert len(stored) == len(tapped) == 5
    assert stored[1:] == tapped[1:]  # the boot's ts is each one's clock


def test_a_refused_payload_gives_nothing_and_hides_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TransactionEvent the models refuse (a string seqNo) gives no captures and is counted;
    the warning names the field, not the token; actions without telemetry give nothing."""
    tap = Tap201("CS-1", shared(tmp_path))
    bad = {**FRAMES[2][1], "seqNo": "zero"}
    with caplog.at_level(logging.WARNING):
        assert tap.on_call("m1", "TransactionEvent", bad) == []
    assert tap.refused == 1
    assert "seqNo" in caplog.text
    assert TOKEN not in caplog.text
    assert tap.on_call("m2", "Heartbeat", {}) == []
    assert tap.on_call("m3", "Authorize", {"idToken": {"idToken": TOKEN, "type": "Local"}}) == []
