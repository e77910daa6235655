"""OCPP-J framing, payload validation codes, settings, charger ids and transaction ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from edge_agent.ocpp.frames import FrameError, Response, call_error_json, parse_frame
from edge_agent.ocpp.lib import Call, FormationViolationError, OCPPError
from edge_agent.ocpp.models import MeterValuesReq, StopTransactionReq, validate
from edge_agent.ocpp.server import charger_id_from_path
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.transactions import EPOCH_S, TransactionStore


def test_a_valid_call_is_decoded() -> None:
    """``[2, id, action, {payload}]`` is a Call; answers from the charger are recognised."""
    msg = parse_frame('[2, "abc", "Heartbeat", {}]')
    assert isinstance(msg, Call)
    assert (msg.unique_id, msg.action, msg.payload) == ("abc", "Heartbeat", {})
    assert parse_frame(b'[3, "abc", {}]') == Response(3, "abc")
    assert parse_frame('[4, "abc", "GenericError", "", {}]') == Response(4, "abc")


@pytest.mark.parametrize(
    ("frame", "unique_id"),
    [
        ("", "-1"),
        ("[2, 'single quotes', 'Heartbeat', {}]", "-1"),
        ('[2, "a", "Heartbeat", {"x": NaN}]', "-1"),
        ("[]", "-1"),
        ("null", "-1"),
        ('["2", "a", "Heartbeat", {}]', "a"),
        ('[true, "a", "Heartbeat", {}]', "a"),
        ('[2, 17, "Heartbeat", {}]', "-1"),
        ('[2, "' + "x" * 37 + '", "Heartbeat", {}]', "-1"),
        ('[2, "a", "Heartbeat", {}, {}]', "a"),
        ('[2, "a", "", {}]', "a"),
        ('[2, "a", 5, {}]', "a"),
        ('[2, "a", "Heartbeat", "{}"]', "a"),
        ('[9, "a"]', "a"),
    ],
)
def test_bad_frames_raise_formation_violation(frame: str, unique_id: str) -> None:
    """Each malformed frame yields a FormationViolation CALLERROR, with the UniqueId when it
    can be read and ``"-1"`` when it cannot."""
    with pytest.raises(FrameError) as caught:
        parse_frame(frame)
    answer = orjson.loads(caught.value.to_json())
    assert answer[:3] == [4, unique_id, "FormationViolation"]
    assert isinstance(answer[4]["cause"], str)


def test_call_errors_use_the_16_spelling() -> None:
    """The library's 2.0.1 code ``FormatViolation`` is sent as 1.6's ``FormationViolation``."""

    class FormatViolation(OCPPError):
        code = "FormatViolation"

    answer = orjson.loads(call_error_json("u", FormatViolation(details={"cause": "x", "o": [1]})))
    assert answer == [4, "u", "FormationViolation", "", {"cause": "x"}]
    assert orjson.loads(call_error_json("v", FormationViolationError()))[2] == "FormationViolation"


def _meter(**over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "connector_id": 1,
        "meter_value": [{"timestamp": "2026-05-01T12:00:00Z", "sampled_value": [{"value": "1"}]}],
    }
    payload.update(over)
    return payload


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"meter_value": _meter()["meter_value"]}, "ProtocolError"),
        (_meter(extra=1), "FormationViolation"),
        (_meter(meter_value=[]), "OccurenceConstraintViolation"),
        (_meter(connector_id="1"), "TypeConstraintViolation"),
        (_meter(connector_id=-1), "PropertyConstraintViolation"),
        (_meter(transaction_id=2**31), "PropertyConstraintViolation"),
        (
            _meter(meter_value=[{"timestamp": "noon", "sampled_value": [{"value": "1"}]}]),
            "PropertyConstraintViolation",
        ),
        (
            _meter(meter_value=[{"timestamp": "2026-05-01", "sampled_value": [{"value": "1"}]}]),
            "PropertyConstraintViolation",
        ),
        (
            _meter(meter_value=[{"timestamp": 5, "sampled_value": [{"value": "1"}]}]),
            "TypeConstraintViolation",
        ),
        (
            _meter(
                meter_value=[{"timestamp": "2026-05-01T12:00:00Z", "sampled_value": [{"value": 1}]}]
            ),
            "TypeConstraintViolation",
        ),
    ],
)
def test_meter_values_payload_errors_map_to_16_codes(payload: dict[str, Any], code: str) -> None:
    """What is wrong in a MeterValues payload decides the CALLERROR code."""
    with pytest.raises(OCPPError) as caught:
        validate(MeterValuesReq, payload)
    assert orjson.loads(call_error_json("u", caught.value))[2] == code


def test_vendor_measurands_pass_validation_and_naive_times_are_utc() -> None:
    """Measurand/unit/phase/location are free strings here (the 1.6 schema enumerates them);
    a timestamp without an offset is read as UTC."""
    req = validate(
        MeterValuesReq,
        _meter(
            meter_value=[
                {
                    "timestamp": "2026-05-01T12:00:00",
                    "sampled_value": [{"value": "1", "measurand": "Vendor.X", "unit": "furlong"}],
                }
            ]
        ),
    )
    assert req.meter_value[0].timestamp.utcoffset() is not None
    stop = validate(
        StopTransactionReq,
        {"meter_stop": 5, "timestamp": "2026-05-01T12:00:00+02:00", "transaction_id": 7},
    )
    assert (stop.transaction_data, stop.timestamp.hour) == (None, 12)


@pytest.mark.parametrize(
    ("path", "charger_id"),
    [
        ("/ocpp/CP-0042", "CP-0042"),
        ("/CP_1.a", "CP_1.a"),
        ("/a/b/c/CP1?x=1", "CP1"),
        ("/ocpp/CP%2D7", "CP-7"),
        ("/ocpp/", None),
        ("/", None),
        ("/ocpp/CP 1", None),
        ("/ocpp/CP%201", None),
        ("/ocpp/CP%2F1", None),
        ("/ocpp/" + "x" * 65, None),
        ("/ocpp/ÇP", None),
    ],
)
def test_charger_id_is_the_allow_listed_last_segment(path: str, charger_id: str | None) -> None:
    """The charger id is the last path segment, decoded, and only if it is an allowed id."""
    assert charger_id_from_path(path) == charger_id


def test_settings_are_secure_by_default() -> None:
    """Loopback by default; another host needs TLS or an explicit plaintext opt-in."""
    assert OcppSettings().host == "127.0.0.1"
    assert OcppSettings(host="::1").ssl_context() is None
    with pytest.raises(ValidationError, match="not loopback"):
        OcppSettings(host="0.0.0.0")
    assert OcppSettings(host="0.0.0.0", allow_plaintext=True).allow_plaintext
    with pytest.raises(ValidationError, match="both"):
        OcppSettings(cert_file=Path("c.pem"))


async def test_transaction_ids_persist_and_follow_the_clock(tmp_path: Path) -> None:
    """Ids grow by one, survive a restart (state file), never fall behind the clock floor, and
    remember the connector of an open transaction until it stops."""
    now = [EPOCH_S + 1000.0]
    path = tmp_path / "state.json"
    store = TransactionStore(path, clock=lambda: now[0])
    a = await store.start("CP", 1)
    b = await store.start("CP", 2)
    assert (a, b) == (1000, 1001)
    again = TransactionStore(path, clock=lambda: now[0])
    assert await again.start("CP", 1) == 1002
    assert await again.stop(b) == ("CP", 2)
    assert await again.stop(b) is None
    now[0] += 5000
    assert await TransactionStore(path, clock=lambda: now[0]).start("CP", 1) == 6000
    path.write_text("{broken")  # state lost: the clock floor still moves past earlier ids
    now[0] += 1
    assert await TransactionStore(path, clock=lambda: now[0]).start("CP", 1) == 6001
