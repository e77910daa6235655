"""OCPP 2.0.1 translation and local-mode session (no sockets): TransactionEvent's Started /
Updated / Ended with their meter values, MeterValues, StatusNotification and BootNotification
become the same readings and session fields as 1.6; multipliers, phases and contexts; the
session's answers and 2.0.1-spelled CALLERRORs; id tokens hashed, never logged."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge_agent.capture import Capture
from edge_agent.ocpp.idtags import hash_id_tag
from edge_agent.ocpp.transactions import TransactionStore
from edge_agent.ocpp.translate import Translator
from edge_agent.ocpp.v201.models import (
    BootNotificationReq,
    MeterValuesReq,
    StatusNotificationReq,
    TransactionEventReq,
)
from edge_agent.ocpp.v201.session import ChargerSession201
from edge_agent.ocpp.v201.translate import Translator201, transaction_id
from tests.support.ocpp_session import SessionHarness

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SALT = b"a-fleet-wide-salt-of-some-length"
TOKEN = "04A1B2C3D4E5F6"


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def sv(value: float, measurand: str | None = None, unit: str | None = None, **more: Any) -> Any:
    out: dict[str, Any] = {"value": value, **more}
    if measurand is not None:
        out["measurand"] = measurand
    if unit is not None or "multiplier" in more:
        out["unitOfMeasure"] = {"unit": unit} if unit is not None else {}
        if "multiplier" in more:
            out["unitOfMeasure"]["multiplier"] = out.pop("multiplier")
    return out


def mv(seconds: float, *samples: Any) -> dict[str, Any]:
    return {"timestamp": iso(seconds), "sampledValue": list(samples)}


def event(kind: str, seconds: float, tx: str, seq: int, **more: Any) -> dict[str, Any]:
    return {
        "eventType": kind,
        "timestamp": iso(seconds),
        "triggerReason": more.pop("trigger", "MeterValuePeriodic"),
        "seqNo": seq,
        "transactionInfo": {"transactionId": tx, **more.pop("info", {})},
        **more,
    }


def body(c: Capture) -> dict[str, Any]:
    """The capture as the outbox stores it (validated by the shared schema)."""
    out: dict[str, Any] = orjson.loads(c.to_body())
    return out


def tx_event(t: Translator201, payload: dict[str, Any], tag_hash: str | None = None) -> list[Any]:
    return [
        body(c)
        for c in t.transaction_event("CS-1", TransactionEventReq.model_validate(payload), tag_hash)
    ]


# --- translation ---------------------------------------------------------------------------


def test_a_transaction_gives_the_readings_and_session_fields_of_a_1_6_one() -> None:
    """Started (evse 1 connector 2, Transaction.Begin register, an id token) -> its reading is
    the ``started`` one with the hash; Updated (no evse: remembered; kWh, a multiplier, three
    phases, chargingState) -> a reading of the transaction; Ended (Transaction.End register,
    stoppedReason) -> the ``ended`` reading with the reason: meter end - start is the energy."""
    t = Translator201(Translator())
    h = hash_id_tag(SALT, TOKEN)
    started = tx_event(
        t,
        event(
            "Started", 0, "TX-1", 0, trigger="Authorized",
            info={"chargingState": "Charging"},
            evse={"id": 1, "connectorId": 2},
            idToken={"idToken": TOKEN, "type": "ISO14443"},
            meterValue=[mv(0, sv(1000, "Energy.Active.Import.Register", "Wh",
                                 context="Transaction.Begin"))],
        ),
        h,
    )  # fmt: skip
    assert started == [
        {
            "charger_id": "CS-1", "evse_id": 1, "connector_id": 2, "ts": "2026-05-01T12:00:00.000Z",
            "status": "Charging", "transaction_id": "TX-1", "tx_event": "started",
            "id_tag_hash": h, "values": {"energy_wh": 1000.0},
        }
    ]  # fmt: skip
    updated = tx_event(
        t,
        event(
            "Updated", 10, "TX-1", 1, trigger="MeterValuePeriodic",
            info={"chargingState": "SuspendedEV"},
            meterValue=[mv(10,
                sv(1.5, "Energy.Active.Import.Register", "kWh", context="Sample.Periodic"),
                sv(7.2, "Power.Active.Import", "W", multiplier=3),
                sv(16, "Current.Import", "A", phase="L1"),
                sv(15.5, "Current.Import", "A", phase="L2"),
                sv(160, "Current.Import", "A", phase="L3", multiplier=-1),
                sv(231, "Voltage", "V", phase="L1-N"),
                sv(28, "Temperature", "Celsius", location="Cable"),
                sv(80, "SoC", "Percent", location="EV"),
            )],
        ),
    )  # fmt: skip
    assert len(updated) == 1
    u = updated[0]
    assert (u["evse_id"], u["connector_id"], u["transaction_id"]) == (1, 2, "TX-1")
    assert (u["status"], u.get("tx_event"), u.get("id_tag_hash")) == ("SuspendedEV", None, None)
    assert u["values"] == {
        "energy_wh": 1500.0, "power_w": 7200.0, "current_l1_a": 16.0, "current_l2_a": 15.5,
        "current_l3_a": 16.0, "voltage_l1_v": 231.0, "temperature_cable_c": 28.0,
        "soc_pct": 80.0,
    }  # fmt: skip
    ended = tx_event(
        t,
        event(
            "Ended", 20, "TX-1", 2, trigger="EVCommunicationLost",
            info={"chargingState": "Idle", "stoppedReason": "EVDisconnected"},
            meterValue=[
                mv(15, sv(1800, "Energy.Active.Import.Register", "Wh", context="Sample.Periodic")),
                mv(20, sv(2.4, "Energy.Active.Import.Register", "kWh", context="Transaction.End")),
            ],
        ),
    )  # fmt: skip
    assert [r.get("tx_event") for r in ended] == [None, "ended"]
    end = ended[1]
    assert (end["evse_id"], end["connector_id"], end["status"]) == (1, 2, "Available")
    assert (end["stop_reason"], end["values"]) == ("EVDisconnected", {"energy_wh": 2400.0})
    assert end["values"]["energy_wh"] - started[0]["values"]["energy_wh"] == 1400.0
    assert t.tr.open_on("CS-1", 1) is None, "the ended transaction is forgotten"


def test_ended_without_a_reason_or_meter_value() -> None:
    """Ended without stoppedReason is ``Local`` (2.0.1 allows omitting only that), and an event
    without meter values is still a reading (no values) at its timestamp; a reason outside the
    id rule is ``Other``; an Updated carrying the token gets its hash on its reading."""
    t = Translator201(Translator())
    tx_event(t, event("Started", 0, "A", 0, evse={"id": 2, "connectorId": 1}))
    [upd] = tx_event(
        t, event("Updated", 1, "A", 1, idToken={"idToken": "x", "type": "Local"}), "f" * 32
    )
    assert (upd["values"], upd["id_tag_hash"], upd["evse_id"]) == ({}, "f" * 32, 2)
    [end] = tx_event(t, event("Ended", 5, "A", 2))
    assert (end["tx_event"], end["stop_reason"], end["ts"]) == (
        "ended",
        "Local",
        iso(5).replace("Z", ".000Z"),
    )
    assert end["values"] == {}
    tx_event(t, event("Started", 6, "B", 0, evse={"id": 2, "connectorId": 1}))
    [end_b] = tx_event(t, event("Ended", 7, "B", 1, info={"stoppedReason": "Vendor reason!"}))
    assert end_b["stop_reason"] == "Other"


def test_stopped_reasons_shared_with_1_6_and_2_0_1_only_ones_are_kept() -> None:
    """The reasons both versions define keep their 1.6 names; 2.0.1's own are stored as sent."""
    for reason in ("EVDisconnected", "Remote", "PowerLoss", "EnergyLimitReached", "ImmediateReset"):
        t = Translator201(Translator())
        tx_event(t, event("Started", 0, "T", 0, evse={"id": 1, "connectorId": 1}))
        [end] = tx_event(t, event("Ended", 1, "T", 1, info={"stoppedReason": reason}))
        assert end["stop_reason"] == reason


def test_transaction_ids_outside_the_id_rule_are_hashed_the_same_every_time() -> None:
    """2.0.1 allows ``*=:+|@`` in a transactionId: such an id becomes ``h-`` + 32 hex digits of
    its SHA-256, the same on every event, so the session holds together; an allowed one (a UUID)
    is kept."""
    raw = "site:7|tx@42"
    expected = "h-" + hashlib.sha256(raw.encode()).hexdigest()[:32]
    assert transaction_id(raw) == expected
    assert (
        transaction_id("0b3e8c52-57a5-4bd0-9d7a-0d2f4cf3a6f1")
        == "0b3e8c52-57a5-4bd0-9d7a-0d2f4cf3a6f1"
    )
    t = Translator201(Translator())
    [s] = tx_event(t, event("Started", 0, raw, 0, evse={"id": 1, "connectorId": 1}))
    [e] = tx_event(t, event("Ended", 1, raw, 1))
    assert s["transaction_id"] == e["transaction_id"] == expected
    assert (e["evse_id"], e["connector_id"]) == (1, 1)


def test_an_unknown_transaction_without_evse_goes_to_evse_0() -> None:
    """A transaction never seen starting (a gateway restart) that names no EVSE is kept, on EVSE
    0 connector 0, as 1.6 keeps an unknown StopTransaction."""
    t = Translator201(Translator())
    [end] = tx_event(t, event("Ended", 1, "LOST", 9, meterValue=[mv(1, sv(500))]))
    assert (end["evse_id"], end["connector_id"], end["transaction_id"]) == (0, 0, "LOST")
    assert end["values"] == {"energy_wh": 500.0}  # no measurand, no unit: the register in Wh


def test_meter_values_and_status_carry_the_open_transaction_of_their_evse() -> None:
    """MeterValues (evseId) and StatusNotification on an EVSE with an open transaction carry its
    id (so ``Occupied`` never ends the session early); elsewhere none. MeterValues' connector is
    the transaction's, else 1 (0 on EVSE 0, the main meter). ``Occupied`` is kept as is, and the
    status is what the connector's next readings carry; no ``error_code`` in 2.0.1."""
    t = Translator201(Translator())
    tr = t.tr
    tx_event(t, event("Started", 0, "T1", 0, evse={"id": 1, "connectorId": 2}))
    status = StatusNotificationReq.model_validate(
        {"timestamp": iso(1), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 2}
    )
    [s] = [body(c) for c in t.status_notification("CS-1", status)]
    assert (s["status"], s["transaction_id"], s["values"], s["evse_id"]) == (
        "Occupied",
        "T1",
        {},
        1,
    )
    on_tx = MeterValuesReq.model_validate({"evseId": 1, "meterValue": [mv(2, sv(1200))]})
    [m] = [body(c) for c in t.meter_values("CS-1", on_tx)]
    assert (m["evse_id"], m["connector_id"], m["transaction_id"], m["status"]) == (
        1,
        2,
        "T1",
        "Occupied",
    )
    idle = MeterValuesReq.model_validate(
        {"evseId": 3, "meterValue": [mv(2, sv(5, "Power.Active.Import", "kW"))]}
    )
    [i] = [body(c) for c in t.meter_values("CS-1", idle)]
    assert (i["evse_id"], i["connector_id"], i.get("transaction_id"), i["values"]) == (
        3,
        1,
        None,
        {"power_w": 5000.0},
    )
    main = MeterValuesReq.model_validate({"evseId": 0, "meterValue": [mv(2, sv(9e5))]})
    [z] = [body(c) for c in t.meter_values("CS-1", main)]
    assert (z["evse_id"], z["connector_id"]) == (0, 0)
    free = StatusNotificationReq.model_validate(
        {"timestamp": iso(3), "connectorStatus": "Available", "evseId": 2, "connectorId": 1}
    )
    [a] = [body(c) for c in t.status_notification("CS-1", free)]
    assert (a["status"], a.get("transaction_id")) == ("Available", None)
    assert tr.status("CS-1", 1, 2) == "Available"
    assert tr.status("CS-1", 2, 1) == "Occupied"


def test_multipliers_units_and_bad_numbers() -> None:
    """value x 10^multiplier before the unit's conversion; a product that overflows is an invalid
    sample (counted, the rest kept); the same key twice keeps the first (as 1.6)."""
    t = Translator201(Translator())
    req = MeterValuesReq.model_validate(
        {"evseId": 1, "meterValue": [mv(0,
            sv(12.5, "Energy.Active.Import.Register", "Wh", multiplier=3),
            sv(3, "Energy.Reactive.Import.Register", "kvarh"),
            sv(-25, "Power.Active.Import", "kW", multiplier=-1),
            sv(1, "Power.Offered", "W", multiplier=400),
            sv(2, "Energy.Active.Import.Register", "Wh"),
        )]}
    )  # fmt: skip
    [r] = [body(c) for c in t.meter_values("CS-1", req)]
    assert r["values"] == {
        "energy_wh": 12_500.0, "energy_reactive_varh": 3000.0, "power_w": -2500.0,
        "invalid_samples": 1.0,
    }  # fmt: skip
    assert t.tr.invalid_samples == 1


def test_boot_notification_feeds_the_charger_registry_fields() -> None:
    """chargingStation vendorName, model, serialNumber, firmwareVersion -> charger_info, on a
    reading of EVSE 0 with no values (as 1.6's BootNotification)."""
    t = Translator201(Translator())
    req = BootNotificationReq.model_validate(
        {"reason": "PowerUp", "chargingStation": {"vendorName": "Acmé", "model": "AC-22",
         "serialNumber": "SN-1", "firmwareVersion": "2.0.1-rc"}}
    )  # fmt: skip
    [b] = [body(c) for c in t.boot("CS-1", T0, req)]
    assert b["charger_info"] == {
        "vendor": "Acme",
        "model": "AC-22",
        "serial": "SN-1",
        "firmware": "2.0.1-rc",
    }
    assert (b["evse_id"], b["connector_id"], b["values"]) == (0, 0, {})


# --- the local-mode session ----------------------------------------------------------------


def _harness(tmp_path: Path) -> SessionHarness:
    return SessionHarness(tmp_path, SALT, session=ChargerSession201, charger_id="CS-9")


async def test_session_answers_after_storing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Boot -> Accepted with the interval; TransactionEvent with a token -> idTokenInfo
    Accepted, its readings stored first (with the token's hash); Authorize Accepted; Heartbeat a
    time; the token is in no log line, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    h = _harness(tmp_path)
    boot = await h.call(
        "BootNotification",
        {"reason": "PowerUp", "chargingStation": {"vendorName": "V", "model": "M"}},
    )
    assert boot[2]["status"] == "Accepted"
    assert boot[2]["interval"] > 0
    assert len(h.stored) == 1
    started = event(
        "Started", 0, "TX-9", 0, evse={"id": 1, "connectorId": 1},
        idToken={"idToken": TOKEN, "type": "ISO14443"}, meterValue=[mv(0, sv(10))],
    )  # fmt: skip
    answer = await h.call("TransactionEvent", started)
    assert answer[:2] == [3, "u1"]
    assert answer[2] == {"idTokenInfo": {"status": "Accepted"}}
    assert h.stored[-1].tx_event == "started"
    assert h.stored[-1].id_tag_hash == hash_id_tag(SALT, TOKEN)
    assert (await h.call("TransactionEvent", event("Updated", 1, "TX-9", 1)))[2] == {}
    auth = await h.call("Authorize", {"idToken": {"idToken": TOKEN, "type": "ISO14443"}})
    assert auth[2] == {"idTokenInfo": {"status": "Accepted"}}
    assert "currentTime" in (await h.call("Heartbeat", {}))[2]
    status = {"timestamp": iso(2), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}
    assert (await h.call("StatusNotification", status))[2] == {}
    assert TOKEN not in caplog.text
    assert TOKEN.lower() not in caplog.text


@pytest.mark.parametrize(
    ("action", "payload", "code"),
    [
        ("TransactionEvent", {**event("Updated", 1, "T", 1), "bogus": 1}, "FormatViolation"),
        (
            "TransactionEvent",
            {k: v for k, v in event("Updated", 1, "T", 1).items() if k != "seqNo"},
            "ProtocolError",
        ),
        (
            "TransactionEvent",
            event("Updated", 1, "T", 1, meterValue=[mv(1)]),
            "OccurrenceConstraintViolation",
        ),
        (
            "TransactionEvent",
            {**event("Updated", 1, "T", 1), "seqNo": "1"},
            "TypeConstraintViolation",
        ),
        (
            "MeterValues",
            {"evseId": -1, "meterValue": [mv(0, sv(1))]},
            "PropertyConstraintViolation",
        ),
        ("NotifyDisplayMessages", {"requestId": 1}, "NotImplemented"),
        ("StartTransaction", {"connectorId": 1}, "NotSupported"),
    ],
)
async def test_session_refuses_with_2_0_1_codes(
    tmp_path: Path, action: str, payload: dict[str, Any], code: str
) -> None:
    """Malformed requests get the CALLERROR 2.0.1 prescribes, in 2.0.1's spelling; an action
    2.0.1 defines but the gateway does not handle is NotImplemented, a 1.6-only one
    NotSupported; nothing is stored."""
    h = _harness(tmp_path)
    answer = await h.call(action, payload)
    assert answer[:3] == [4, "u0", code], answer
    assert h.stored == []


async def test_a_bad_frame_gets_format_violation(tmp_path: Path) -> None:
    """A frame that is not OCPP-J at all: FormatViolation with MessageId "-1" (2.0.1's rule)."""
    h = _harness(tmp_path)
    await h.session.route_message(b"not json")
    assert h.wire.sent[-1][:3] == [4, "-1", "FormatViolation"]


def test_a_connector_status_2_0_1_does_not_define_is_kept_without_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A vendor connectorStatus would make the schema refuse the reading: it is stored without
    a status (the schema's statuses are 1.6's and Occupied), with a warning naming it."""
    t = Translator201(Translator())
    odd = StatusNotificationReq.model_validate(
        {"timestamp": iso(1), "connectorStatus": "Charging!", "evseId": 1, "connectorId": 1}
    )
    with caplog.at_level(logging.WARNING):
        [r] = [body(c) for c in t.status_notification("CS-1", odd)]
    assert (r.get("status"), r["values"]) == (None, {})
    assert "Charging!" in caplog.text


async def test_a_refused_transaction_event_does_not_log_its_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TransactionEvent refused for a bad field still names its token nowhere: not in the
    library's error log line (which quotes the request), not in the CALLERROR."""
    caplog.set_level(logging.DEBUG)
    h = _harness(tmp_path)
    bad = {**event("Started", 0, "T", 0), "idToken": {"idToken": TOKEN, "type": "ISO14443"},
           "offline": "yes"}  # fmt: skip
    answer = await h.call("TransactionEvent", bad)
    assert answer[2] == "TypeConstraintViolation"
    assert TOKEN not in orjson.dumps(answer).decode()
    assert "Error while handling request" in caplog.text
    assert TOKEN not in caplog.text


async def test_where_2_0_1_transactions_run_survives_a_restart(tmp_path: Path) -> None:
    """The local session keeps where a 2.0.1 transaction runs in the state file once it started
    (one write, not one per event) and forgets it at its end; a state file of an older version
    (no ``located``) still loads, with its 1.6 state."""
    path = tmp_path / "s.json"
    h = _harness(tmp_path)
    started = event("Started", 0, "T-R", 0, evse={"id": 2, "connectorId": 3})
    await h.call("TransactionEvent", started)
    assert TransactionStore(path).located == {("CS-9", "T-R"): (2, 3)}
    written = path.stat().st_mtime_ns
    await h.call("TransactionEvent", event("Updated", 1, "T-R", 1))
    assert path.stat().st_mtime_ns == written, "an Updated that moves nothing writes nothing"
    await h.call("TransactionEvent", event("Ended", 2, "T-R", 2))
    assert TransactionStore(path).located == {}
    path.write_bytes(orjson.dumps({"last_id": 7, "open": {"7": ["CP-1", 1]}}))
    old = TransactionStore(path)
    assert (old.last_id, old.open, old.located) == (7, {7: ("CP-1", 1)}, {})
