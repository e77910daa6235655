"""Transaction data and charger identity from OCPP 1.6 (no sockets): started/ended readings,
stop reasons, id-tag hashes and their salt, BootNotification's charger_info, and no raw id tag
in any log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from edge_agent.budget import is_energy
from edge_agent.capture import Capture
from edge_agent.ocpp.idtags import (
    REDACTED,
    gateway_salt,
    hash_id_tag,
    load_salt,
    salt_path,
    scrub,
    tags_in,
)
from edge_agent.ocpp.models import MeterValue, SampledValue
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.translate import Translator, info_text, stop_reason
from edge_agent.series import UniqueTs
from telemetry_common.errors import ConfigError
from telemetry_common.schema import Reading
from tests.support.ocpp_session import SessionHarness

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SALT = b"a-fleet-wide-salt-of-some-length"
TAG = "04A1B2C3D4E5F6"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


def reading(c: Capture) -> dict[str, Any]:
    """The capture as the outbox stores it (validated by the shared schema)."""
    body: dict[str, Any] = orjson.loads(c.to_body())
    return body


# --- the hash and its salt ---------------------------------------------------------------------


def test_id_tag_hash_is_the_salted_hmac_of_the_tag_as_ocpp_compares_it() -> None:
    """HMAC-SHA256(salt, idTag), first 16 bytes in hex; OCPP's idTag is case-insensitive, so
    both spellings of one card give one hash; another salt gives another hash."""
    expected = hmac.new(SALT, TAG.encode(), hashlib.sha256).hexdigest()[:32]
    assert hash_id_tag(SALT, TAG) == expected
    assert hash_id_tag(SALT, TAG.lower()) == expected
    assert hash_id_tag(b"another-salt-entirely", TAG) != expected
    assert Reading.model_fields["id_tag_hash"] is not None
    Capture("CP-1", T0, {}, transaction_id="1", id_tag_hash=expected).to_body()  # its shape


def test_a_gateway_makes_its_salt_once_and_keeps_it(tmp_path: Path) -> None:
    """Unset ID_TAG_SALT: a random salt is written beside the state file (mode 0600) and read
    back unchanged after a restart; a warning says the hashes are this gateway's only."""
    state = tmp_path / "edge-ocpp-state.json"
    path = salt_path(state)
    assert path == tmp_path / "edge-ocpp-state.salt"
    first = load_salt(None, state)
    assert len(first) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_salt(None, state) == first
    other = tmp_path / "other" / "state.json"
    other.parent.mkdir()
    assert load_salt(None, other) != first  # another gateway, another salt


def test_unset_salt_warns_and_a_configured_one_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "s.json"
    with caplog.at_level(logging.WARNING, "edge_agent.ocpp.idtags"):
        assert load_salt("x" * 16, state) == b"x" * 16
        assert not salt_path(state).exists()
        assert caplog.records == []
        load_salt(None, state)
    assert "ID_TAG_SALT is not set" in caplog.text
    assert "compare only with this gateway's" in caplog.text


def test_a_salt_file_that_is_not_one_stops_the_source(tmp_path: Path) -> None:
    """A damaged salt file is not silently replaced (every hash would change)."""
    path = tmp_path / "s.salt"
    path.write_text("not a salt\n")
    with pytest.raises(ConfigError, match="not a salt file"):
        gateway_salt(path)


def test_the_salt_setting_is_secret_and_long_enough() -> None:
    settings = OcppSettings(id_tag_salt="s" * 16)
    assert "ssss" not in repr(settings)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        OcppSettings(id_tag_salt="short")


def test_scrub_takes_tags_out_of_frames_reprs_and_error_messages() -> None:
    """A frame (JSON), a request's repr, and an error quoting the tag lose the tag."""
    frame = '[2,"u","StartTransaction",{"connectorId":1,"idTag":"SECRET-1","meterStart":0}]'
    assert "SECRET-1" not in scrub(frame)
    assert f'"idTag": "{REDACTED}"' in scrub(frame).replace('":"', '": "')
    call_repr = "<Call - payload={'connector_id': 1, 'id_tag': \"O'Brien\", 'x': 'y'}>"
    assert "Brien" not in scrub(call_repr)
    assert "'x': 'y'" in scrub(call_repr)
    payload = {"idTag": "VERY-LONG-TAG-X", "nested": [{"parentIdTag": "PARENT"}]}
    assert tags_in(payload) == {"VERY-LONG-TAG-X", "PARENT"}
    cause = "'VERY-LONG-TAG-X' is too long; PARENT"
    assert scrub(cause, tags_in(payload)) == f"'{REDACTED}' is too long; {REDACTED}"


# --- translate ---------------------------------------------------------------------------------


def test_meter_start_and_stop_are_started_and_ended_readings() -> None:
    """meterStart: tx_event started, its hash; meterStop: ended, the reason (Local when the
    charger gives none, as OCPP 1.6 says), the hash only when the stop named a tag."""
    tr = Translator()
    [start] = tr.register("CP-1", 2, at(0), 1_000, 77, begin=True, id_tag_hash="a" * 32)
    assert reading(start) == {
        "charger_id": "CP-1", "evse_id": 2, "connector_id": 2, "ts": "2026-05-01T12:00:00.000Z",
        "transaction_id": "77", "tx_event": "started", "id_tag_hash": "a" * 32,
        "values": {"energy_wh": 1_000.0},
    }  # fmt: skip
    [stop] = tr.register("CP-1", 2, at(60), 1_500, 77, begin=False)
    assert (stop.tx_event, stop.stop_reason, stop.id_tag_hash) == ("ended", "Local", None)
    assert stop.values == {"energy_wh": 1_500.0}
    [remote] = tr.register(
        "CP-1", 2, at(70), 1_500, 78, begin=False, reason="EVDisconnected", id_tag_hash="b" * 32
    )
    assert reading(remote)["stop_reason"] == "EVDisconnected"
    assert reading(remote)["id_tag_hash"] == "b" * 32


def test_a_stop_reason_that_is_not_an_id_is_stored_as_other() -> None:
    """The meterStop is never lost to its reason: a vendor reason that is an allowed id is kept,
    anything else becomes Other."""
    assert stop_reason(None) == "Local"
    assert stop_reason("Remote") == "Remote"
    assert stop_reason("Vendor.Breaker-Trip") == "Vendor.Breaker-Trip"
    assert stop_reason("emergency stop!") == "Other"
    [stop] = Translator().register("CP-1", 1, at(0), 5, 9, begin=False, reason="a b")
    assert (stop.stop_reason, stop.values) == ("Other", {"energy_wh": 5.0})


def test_transaction_end_meter_values_keep_the_transaction_but_no_event() -> None:
    tr = Translator()
    end = MeterValue(
        timestamp=at(5),
        sampled_value=[SampledValue(value="1500", context="Transaction.End")],
    )
    [mv] = tr.meter_values("CP-1", 1, [end], 9)
    assert (mv.transaction_id, mv.tx_event, mv.stop_reason) == ("9", None, None)
    assert mv.id_tag_hash is None


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("Voltaro", "Voltaro"),
        ("  padded \t", "padded"),
        ("SN123\x00\x00\x00", "SN123"),
        ("Électricité", "Electricite"),
        ("\uff21\uff22\uff23", "ABC"),  # fullwidth: NFKD folds it
        ("型号-7", "??-7"),
        ("a\u200bb", "ab"),
        ("x" * 70, "x" * 64),
        ("\x00\x01", None),
        ("", None),
        (None, None),
    ],
)
def test_info_text_is_printable_ascii_of_at_most_64(raw: str | None, text: str | None) -> None:
    assert info_text(raw) == text


def test_boot_is_a_connector_0_reading_with_charger_info() -> None:
    """values {} at connector/EVSE 0, the texts made fit for the schema, empty ones left out."""
    tr = Translator()
    [boot] = tr.boot(
        "CP-1", at(0), vendor="Voltaro\x00", model="Homeline 22T", serial="  ", firmware="2.3.1"
    )
    assert reading(boot) == {
        "charger_id": "CP-1", "evse_id": 0, "connector_id": 0, "ts": "2026-05-01T12:00:00.000Z",
        "values": {}, "charger_info": {"vendor": "Voltaro", "model": "Homeline 22T",
                                       "firmware": "2.3.1"},
    }  # fmt: skip


def test_the_budget_tells_boot_readings_from_energy_readings() -> None:
    """A boot reading is a non-energy reading for the outbox budget even if a text it carries
    spells the energy key; started/ended readings are energy readings."""
    tr = Translator()
    [boot] = tr.boot("CP-1", at(0), vendor='"energy_wh":1', model="M", serial=None, firmware=None)
    assert not is_energy(boot.to_body())
    [start] = tr.register("CP-1", 1, at(1), 5, 1, begin=True)
    assert is_energy(start.to_body())


def test_started_and_a_meter_value_at_the_same_ts_both_keep_their_identity() -> None:
    """meterStart and the Transaction.Begin MeterValues commonly share a ts: the unique-ts rule
    moves the later one by 1 ms and keeps every field of both; likewise at the stop."""
    tr = Translator()
    started = tr.register("CP-1", 1, at(0), 100, 5, begin=True, id_tag_hash="c" * 32)
    begin = MeterValue(
        timestamp=at(0), sampled_value=[SampledValue(value="100", context="Transaction.Begin")]
    )
    sample = tr.meter_values("CP-1", 1, [begin], 5)
    end = MeterValue(timestamp=at(9), sampled_value=[SampledValue(value="300")])
    stop = tr.meter_values("CP-1", 1, [end], 5)
    stop += tr.register("CP-1", 1, at(9), 300, 5, begin=False, reason="Remote")
    out, _ = UniqueTs({}).apply(started + sample + stop)
    assert [(c.ts - T0) / timedelta(milliseconds=1) for c in out] == [0, 1, 9000, 9001]
    assert [c.tx_event for c in out] == ["started", None, None, "ended"]
    assert out[0].id_tag_hash == "c" * 32
    assert out[3].stop_reason == "Remote"
    assert {c.transaction_id for c in out} == {"5"}
    assert [c.values["energy_wh"] for c in out] == [100.0, 100.0, 300.0, 300.0]


# --- the session (the library's router, without a socket) ------------------------------------


def _harness(tmp_path: Path) -> SessionHarness:
    return SessionHarness(tmp_path, SALT)


async def test_session_start_stop_and_boot_become_readings(tmp_path: Path) -> None:
    """Boot -> charger_info reading (serial from chargeBoxSerialNumber when the charge point's is
    absent); StartTransaction -> started with the tag's hash; StopTransaction with transaction
    data -> the data's reading (no event) then the ended one with the reason and hash."""
    h = _harness(tmp_path)
    boot = await h.call(
        "BootNotification",
        {"chargePointVendor": "V", "chargePointModel": "M", "chargeBoxSerialNumber": "CB-1",
         "firmwareVersion": "1.0"},
    )  # fmt: skip
    assert boot[2]["status"] == "Accepted"
    start = await h.call(
        "StartTransaction", {"connectorId": 1, "idTag": TAG, "meterStart": 10, "timestamp": iso(1)}
    )
    tid = start[2]["transactionId"]
    data = [{"timestamp": iso(9), "sampledValue": [{"value": "90", "context": "Transaction.End"}]}]
    stop = {"meterStop": 90, "timestamp": iso(9), "transactionId": tid, "idTag": TAG.lower(),
            "reason": "EVDisconnected", "transactionData": data}  # fmt: skip
    assert (await h.call("StopTransaction", stop))[2] == {"idTagInfo": {"status": "Accepted"}}
    boot_r, start_r, end_mv, end_r = (reading(c) for c in h.stored)
    assert boot_r["charger_info"] == {"vendor": "V", "model": "M", "serial": "CB-1",
                                      "firmware": "1.0"}  # fmt: skip
    assert (boot_r["connector_id"], boot_r["values"]) == (0, {})
    digest = hash_id_tag(SALT, TAG)
    assert start_r["tx_event"] == "started"
    assert start_r["id_tag_hash"] == digest
    assert start_r["values"] == {"energy_wh": 10.0}
    assert "tx_event" not in end_mv
    assert end_mv["transaction_id"] == str(tid)
    assert (end_r["tx_event"], end_r["stop_reason"], end_r["id_tag_hash"]) == (
        "ended",
        "EVDisconnected",
        digest,
    )
    for c in h.stored:
        assert TAG not in c.to_body().decode().upper()


async def test_no_raw_id_tag_in_any_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG (the library logs every frame) and for refused requests (a schema error quotes
    the tag), the tag never appears in a log record or in the CALLERROR sent back."""
    h = _harness(tmp_path)
    secret, too_long = "CARD-7F3A9", "CARD-" + "Z" * 30
    with caplog.at_level(logging.DEBUG):
        await h.session.route_message(
            orjson.dumps([2, "a", "Authorize", {"idTag": secret}]).decode()
        )
        await h.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": secret, "meterStart": 0, "timestamp": iso(0)},
        )
        refused = await h.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": too_long, "meterStart": 0, "timestamp": iso(0)},
        )
        bad_stop = await h.call(
            "StopTransaction",
            {"meterStop": 1, "timestamp": "later", "transactionId": 1, "idTag": secret},
        )
    assert refused[0] == 4
    assert bad_stop[2] == "PropertyConstraintViolation"
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused" in m for m in messages)
    for text in (*messages, orjson.dumps(h.wire.sent).decode()):
        assert secret not in text
        assert "ZZZZZ" not in text
