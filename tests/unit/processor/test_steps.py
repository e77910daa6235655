"""Pure processor steps: validation to dead-letter records, line protocol, last-value cache."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from processor import validate as v
from processor.lineproto import to_lines, ts_ns, value_fields_from_json
from processor.state.bindings import Bindings
from processor.state.lvc import LastValueCache, Stamp
from telemetry_common.schema import ROWS_VALIDATOR, Reading

NOW = datetime(2026, 5, 1, 12, 0, 5, tzinfo=UTC)
TS = v.TsWindow(max_future=timedelta(minutes=5), max_age=timedelta(days=366))


def reading(seq: int, ts: str = "2026-05-01T12:00:00.000Z", **values: float) -> dict[str, object]:
    return {"charger_id": "CP-1", "seq": seq, "ts": ts, "values": values or {"power_w": 1.0}}


def payload(gateway: str, readings: list[object], **extra: object) -> bytes:
    return orjson.dumps(
        {"schema": "charger-telemetry/1", "gateway_id": gateway, "readings": readings, **extra}
    )


def decode(gateway: str, raw: bytes) -> v.Decoded:
    return v.decode_message(gateway, raw, now=NOW, ts=TS)


def test_valid_batch_takes_the_fast_path() -> None:
    """A valid batch yields every reading and no rejection."""
    out = decode("gw-1", payload("gw-1", [reading(1), reading(2)]))
    assert [r["seq"] for r in out.rows] == [1, 2]
    assert out.nss == [ts_ns(r["ts"]) for r in out.rows]
    assert out.positions == [0, 1]
    assert out.rejected == []


def test_bad_reading_is_isolated_from_good_ones() -> None:
    """One invalid reading is rejected alone, with its index and raw JSON; the others stay."""
    bad = reading(2, ts="2026-05-01T12:00:00")  # naive
    out = decode("gw-1", payload("gw-1", [reading(1), bad, reading(3)]))
    assert [r["seq"] for r in out.rows] == [1, 3]
    assert out.positions == [0, 2]  # positions in the payload, not the list
    [rej] = out.rejected
    assert rej.reason == v.INVALID_READING
    assert rej.index == 1
    assert orjson.loads(rej.raw) == bad
    assert "ts" in rej.detail


def test_a_batch_without_schema_keeps_its_good_readings_beside_a_bad_one() -> None:
    """``schema`` may be left out (the contract's default): a batch without it that holds one
    invalid reading loses only that reading, as a batch with it does (was: the whole message
    dead-lettered as invalid_envelope, its valid readings with it)."""
    bad = reading(2, ts="2026-05-01T12:00:00")  # naive
    body = orjson.dumps({"gateway_id": "gw-1", "readings": [reading(1), bad, reading(3)]})
    out = decode("gw-1", body)
    assert [r["seq"] for r in out.rows] == [1, 3]
    assert [(r.reason, r.index) for r in out.rejected] == [(v.INVALID_READING, 1)]
    wrong = orjson.dumps({"schema": "charger-telemetry/2", "gateway_id": "gw-1", "readings": [bad]})
    assert [r.reason for r in decode("gw-1", wrong).rejected] == [v.INVALID_ENVELOPE]


def test_gateway_mismatch_rejects_the_whole_message() -> None:
    """A body claiming another gateway than its topic is rejected entirely."""
    out = decode("gw-1", payload("gw-2", [reading(1)]))
    assert (out.rows, out.nss, out.positions) == ([], [], [])
    assert [r.reason for r in out.rejected] == [v.GATEWAY_MISMATCH]


def test_envelope_json_and_size_errors() -> None:
    """Not JSON, a wrong envelope and an oversize payload each get their own reason."""
    assert decode("gw-1", b"{nope").rejected[0].reason == v.INVALID_JSON
    assert decode("gw-1", payload("gw-1", [])).rejected[0].reason == v.INVALID_ENVELOPE
    wrong_schema = orjson.dumps({"schema": "x/9", "gateway_id": "gw-1", "readings": [reading(1)]})
    assert decode("gw-1", wrong_schema).rejected[0].reason == v.INVALID_ENVELOPE
    big = b" " * (256 * 1024 + 1)
    assert decode("gw-1", big).rejected[0].reason == v.PAYLOAD_TOO_LARGE


def test_far_future_reading_is_rejected() -> None:
    """A reading stamped beyond the allowed clock skew is dead-lettered, the rest kept."""
    out = decode("gw-1", payload("gw-1", [reading(1), reading(2, ts="2026-05-01T13:00:00Z")]))
    assert [r["seq"] for r in out.rows] == [1]
    assert (out.nss, out.positions) == ([ts_ns(out.rows[0]["ts"])], [0])
    assert out.rejected[0].reason == v.TS_IN_FUTURE
    assert out.rejected[0].index == 1
    assert orjson.loads(out.rejected[0].raw)["ts"] == "2026-05-01T13:00:00Z"  # as it was sent


@pytest.mark.parametrize(
    "ts", ["1970-01-01T00:00:05Z", "2000-01-01T00:00:00Z", "2025-04-30T12:00:00Z"]
)
def test_a_reading_older_than_the_window_is_rejected_and_the_rest_kept(ts: str) -> None:
    """A reading stamped further back than max_age (a clock reset to 1970 or 2000, or older
    than a year) is dead-lettered as ts_too_old with its index and as sent; the readings beside
    it, at the window's edge included, are kept."""
    edge = (NOW - TS.max_age).isoformat()
    out = decode("gw-1", payload("gw-1", [reading(1), reading(2, ts=ts), reading(3, ts=edge)]))
    assert [r["seq"] for r in out.rows] == [1, 3]
    assert out.positions == [0, 2]
    [rej] = out.rejected
    assert (rej.reason, rej.index) == (v.TS_TOO_OLD, 1)
    assert orjson.loads(rej.raw)["ts"] == ts
    assert "before" in rej.detail


def test_line_protocol_matches_schema() -> None:
    """Tags, float fields, escaped status, integer seq and exact nanoseconds."""
    r = Reading.model_validate_json(
        orjson.dumps(
            {
                "charger_id": "CP-1",
                "evse_id": 2,
                "connector_id": 3,
                "seq": 7,
                "ts": "2026-05-01T12:00:00.123456Z",
                "status": "Charging",
                "values": {"power_w": 7200, "energy_wh": 1.5},
            }
        )
    )
    assert to_lines("gw-1", [dict(r)], [ts_ns(r.ts)])[0] == (
        "readings,charger_id=CP-1,connector_id=3,evse_id=2,gateway_id=gw-1 "
        'power_w=7200.0,energy_wh=1.5,status="Charging",seq=7i 1777636800123456000'
    )


def test_ts_ns_is_exact_before_and_after_epoch() -> None:
    """Nanoseconds are computed without float rounding, also for pre-1970 times."""
    late = datetime(2262, 4, 10, 0, 0, 0, 999999, tzinfo=UTC)
    assert ts_ns(late) == calendar.timegm(late.utctimetuple()) * 10**9 + 999_999_000
    assert float(ts_ns(late)) != ts_ns(late)  # a float path would have rounded this
    assert ts_ns(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1000


def test_a_reading_without_values_is_still_a_valid_line() -> None:
    """The schema allows ``values == {}`` (a status change): the line has its status and seq
    fields and no stray comma."""
    r = Reading.model_validate_json(
        orjson.dumps({"charger_id": "CP-1", "seq": 3, "ts": "2026-05-01T12:00:00Z",
                      "status": "Faulted", "values": {}})
    )  # fmt: skip
    assert to_lines("gw-1", [dict(r)], [ts_ns(r.ts)])[0] == (
        "readings,charger_id=CP-1,connector_id=0,evse_id=0,gateway_id=gw-1 "
        'status="Faulted",seq=3i 1777636800000000000'
    )


def stamp(body: dict[str, object]) -> Stamp:
    r = Reading.model_validate_json(orjson.dumps(body))
    return Stamp(ts_ns(r.ts), r.seq, "gw-1")


def test_lvc_keeps_the_newest_ts_not_the_last_arrival() -> None:
    """A late, older reading (or a replay) never replaces the newest one."""
    lvc = LastValueCache()
    new = stamp(reading(5, ts="2026-05-01T12:00:10Z"))
    old = stamp(reading(4, ts="2026-05-01T12:00:05Z"))
    assert lvc.offer("CP-1", new)
    assert not lvc.offer("CP-1", old)
    assert not lvc.offer("CP-1", new)
    # What it holds is seq 5 at 12:00:10: the next seq at that ts is newer, a lower one is not.
    assert not lvc.offer("CP-1", Stamp(new.ts_ns, 4, "gw-1"))
    assert lvc.offer("CP-1", Stamp(new.ts_ns, 6, "gw-1"))


def test_lvc_seed_from_storage_never_goes_backwards() -> None:
    """A warm-up seed older than what the cache holds is ignored; a newer reading still wins."""
    lvc = LastValueCache()
    lvc.offer("CP-1", stamp(reading(5, ts="2026-05-01T12:00:10Z")))
    assert not lvc.offer("CP-1", Stamp(ts_ns(datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)), 9, "gw"))
    held = ts_ns(datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC))
    assert not lvc.offer("CP-1", Stamp(held, 5, "gw-1"))  # still the one it held
    assert lvc.offer("CP-1", Stamp(held, 6, "gw-1"))
    assert not lvc.offer("CP-1", stamp(reading(4, ts="2026-05-01T12:00:09Z")))


def test_bindings_first_come_and_provisioned() -> None:
    """First-come binds a charger to its first gateway; provisioned refuses unlisted chargers."""
    first = Bindings()
    assert first.claim("gw-1", "CP-1") is None
    assert first.claim("gw-2", "CP-1") == "gw-1"
    first.seed("CP-2", "gw-2")
    assert first.claim("gw-1", "CP-2") == "gw-2"
    fixed = Bindings({"CP-1": "gw-1"})
    assert fixed.claim("gw-1", "CP-1") is None
    assert fixed.claim("gw-1", "CP-9") == ""
    fixed.seed("CP-9", "gw-1")
    assert fixed.claim("gw-1", "CP-9") == ""


def test_value_fields_from_json_are_the_validated_values() -> None:
    """Taken from the payload's text, the fields hold the same numbers the rows hold (whatever
    the JSON spacing and number forms); an escape sequence or a duplicate key, where the text
    could differ from what was validated, gives None (the rows are rendered instead)."""
    text = (
        b'{"schema":"charger-telemetry/1","gateway_id":"gw-1","readings":['
        b'{"charger_id":"CP-1","seq":1,"ts":"2026-05-01T12:00:00Z","values":'
        b'{ "power_w" : 7200 ,\n "energy_wh":1.5e3,"soc_pct":-0.25}},'
        b'{"values":{},"charger_id":"CP-1","seq":2,"ts":"2026-05-01T12:00:01Z"}]}'
    )
    rows = ROWS_VALIDATOR.validate_json(text)["readings"]
    fields = value_fields_from_json(text, rows)
    assert fields == ["power_w=7200,energy_wh=1.5e3,soc_pct=-0.25", ""]
    parsed = [dict(kv.split("=") for kv in f.split(",") if kv) for f in fields]
    assert [{k: float(x) for k, x in p.items()} for p in parsed] == [r["values"] for r in rows]
    escaped = text.replace(b'"power_w"', b'"\\u0070ower_w"')
    assert (
        value_fields_from_json(escaped, ROWS_VALIDATOR.validate_json(escaped)["readings"]) is None
    )
    twice = text.replace(b'"soc_pct"', b'"power_w"')
    assert value_fields_from_json(twice, ROWS_VALIDATOR.validate_json(twice)["readings"]) is None


def test_transaction_fields_are_string_fields_only_when_given() -> None:
    """transaction_id, tx_event, stop_reason and id_tag_hash are quoted string fields before
    seq; a reading without a transaction has none of them."""
    body = {"charger_id": "CP-1", "seq": 7, "ts": "2026-05-01T12:00:00Z",
            "transaction_id": "T.1-a", "tx_event": "ended", "stop_reason": "EVDisconnected",
            "id_tag_hash": "ab" * 16, "values": {"energy_wh": 2.0}}  # fmt: skip
    r = Reading.model_validate_json(orjson.dumps(body))
    assert to_lines("gw-1", [dict(r)], [ts_ns(r.ts)])[0] == (
        "readings,charger_id=CP-1,connector_id=0,evse_id=0,gateway_id=gw-1 energy_wh=2.0,"
        f'transaction_id="T.1-a",tx_event="ended",stop_reason="EVDisconnected",'
        f'id_tag_hash="{"ab" * 16}",seq=7i 1777636800000000000'
    )
    plain = Reading.model_validate_json(orjson.dumps(body | {"transaction_id": None}))
    assert "transaction_id" not in to_lines("gw-1", [dict(plain)], [ts_ns(plain.ts)])[0]


def test_charger_info_is_escaped_into_a_registry_point() -> None:
    from processor.outputs.registry import registry_lines

    body = {"charger_id": "CP-1", "seq": 1, "ts": "2026-05-01T12:00:00Z",
            "charger_info": {"vendor": 'A "B" \\ C', "firmware": "1.0"}, "values": {}}  # fmt: skip
    plain = {"charger_id": "CP-2", "seq": 2, "ts": "2026-05-01T12:00:00Z", "values": {}}
    rows = [dict(Reading.model_validate_json(orjson.dumps(b))) for b in (body, plain)]
    rows[0]["charger_info"] = dict(rows[0]["charger_info"])
    assert registry_lines("gw-1", rows, [1, 2]) == [
        'chargers,charger_id=CP-1 gateway_id="gw-1",vendor="A \\"B\\" \\\\ C",firmware="1.0" 1'
    ]


def test_transaction_keys_without_a_transaction_id_are_refused_alone() -> None:
    """A reading that starts, ends or names a card for no transaction is refused
    (invalid_reading, naming the keys); the readings beside it, a plain one and a complete
    start, are kept."""
    orphan = reading(2) | {"tx_event": "ended", "stop_reason": "Local"}
    start = reading(3, ts="2026-05-01T12:00:01.000Z") | {
        "transaction_id": "t-1", "tx_event": "started", "id_tag_hash": "ab" * 16,
    }  # fmt: skip
    out = decode("gw-1", payload("gw-1", [reading(1), orphan, start]))
    assert [r["seq"] for r in out.rows] == [1, 3]
    assert out.positions == [0, 2]
    [rej] = out.rejected
    assert (rej.reason, rej.index, rej.detail) == (
        v.INVALID_READING, 1, "tx_event, stop_reason without a transaction_id",
    )  # fmt: skip
    assert orjson.loads(rej.raw) == orphan
