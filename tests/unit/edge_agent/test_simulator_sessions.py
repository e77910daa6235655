"""The simulator's sessions and identities, and the jsonl source's transaction fields."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from edge_agent.capture import Capture
from edge_agent.jsonl import LineError, parse_line
from edge_agent.simulator import STOP_REASON, Simulator, identity
from telemetry_common.schema import ID_TAG_HASH_SHAPE

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def run(sim: Simulator, seconds: int, start: datetime = T0, dt_s: float = 1.0) -> list[Capture]:
    out: list[Capture] = []
    for step in range(seconds):
        out += sim.sample(start + timedelta(seconds=step * dt_s), dt_s)
    return out


def test_each_session_starts_and_ends_like_an_ocpp_transaction() -> None:
    """Over two simulated hours every session is Preparing .. Finishing plus the Available
    reading that ends it: the first reading is 'started' with a card's hash, the last 'ended'
    with EVDisconnected and the same hash, everything between carries the id and no event;
    readings outside sessions carry no transaction; ids never repeat."""
    captures = run(Simulator("gw-1", 4, seed=3), 7200)
    for c in captures:
        c.to_body()
    sessions: dict[tuple[str, str], list[Capture]] = defaultdict(list)
    for c in captures:
        if c.transaction_id is None:
            assert c.status == "Available"
            assert (c.tx_event, c.stop_reason, c.id_tag_hash) == (None, None, None)
        else:
            sessions[(c.charger_id, c.transaction_id)].append(c)
    ended = [s for s in sessions.values() if s[-1].tx_event == "ended"]
    assert len(ended) >= 8
    assert len({tid for _, tid in sessions}) == len(sessions)  # unique per gateway
    for s in ended:
        first, *middle, last = s
        assert (first.status, first.tx_event) == ("Preparing", "started")
        assert first.id_tag_hash is not None
        assert (last.status, last.tx_event, last.stop_reason) == ("Available", "ended", STOP_REASON)
        assert last.id_tag_hash == first.id_tag_hash
        assert all(m.tx_event is None and m.id_tag_hash is None for m in middle)
        assert all(m.status in {"Preparing", "Charging", "Finishing"} for m in middle)
        # the session's energy is meterStop - meterStart, and it did deliver some
        assert last.values["energy_wh"] > first.values["energy_wh"]
        assert last.values["power_w"] == 0.0
    assert len({s[0].id_tag_hash for s in ended}) > 1  # several drivers
    assert all(re.fullmatch(ID_TAG_HASH_SHAPE, str(s[0].id_tag_hash)) for s in ended)


def test_transaction_ids_are_unique_across_restarts() -> None:
    """A restarted simulator (same seed, so the same choices) hands out ids after the previous
    process's: they follow the clock's milliseconds, and grow by one within a millisecond."""
    first = run(Simulator("gw-1", 5, seed=1), 1800)
    last_ts = first[-1].ts
    again = run(Simulator("gw-1", 5, seed=1), 1800, start=last_ts + timedelta(seconds=2))
    before = {c.transaction_id for c in first if c.transaction_id}
    after = {c.transaction_id for c in again if c.transaction_id}
    assert before
    assert after
    assert max(map(int, before)) < min(map(int, after))
    # many sessions starting in one millisecond still get distinct ids
    sim = Simulator("gw-2", 200, seed=5)
    same_ms = [c for _ in range(60) for c in sim.sample(T0, 1.0) if c.tx_event == "started"]
    ids = [int(str(c.transaction_id)) for c in same_ms]
    assert len(ids) > 50
    assert len(set(ids)) == len(ids)


def test_each_charger_introduces_itself_on_its_first_reading_of_each_process() -> None:
    """charger_info (vendor, model, serial, firmware) on the first reading only, again after a
    restart, the same whatever the seed; it matches the charger's rating and phases."""
    sim = Simulator("gw-1", 6, seed=1)
    first = sim.sample(T0, 1.0)
    assert all(c.charger_info is not None for c in first)
    assert all(c.charger_info is None for c in run(sim, 20, start=T0 + timedelta(seconds=1)))
    restarted = Simulator("gw-1", 6, seed=99).sample(T0 + timedelta(hours=1), 1.0)
    assert [c.charger_info for c in restarted] == [c.charger_info for c in first]
    infos = [c.charger_info for c in first]
    assert len({i["serial"] for i in infos if i}) == 6
    for c in first:
        assert c.charger_info is not None
        assert set(c.charger_info) == {"vendor", "model", "serial", "firmware"}
        body = orjson.loads(c.to_body())
        assert body["charger_info"] == c.charger_info
    for cid in Simulator("gw-1", 30).charger_ids:
        me = identity(cid)
        assert (me.phases, me.rating_w) in {(1, 7_400.0), (3, 11_000.0), (3, 22_000.0)}
        assert me.model.endswith(("7.4S", "11T", "22T"))


def test_a_seed_repeats_everything() -> None:
    a = run(Simulator("gw-1", 3, seed=42), 900)
    b = run(Simulator("gw-1", 3, seed=42), 900)
    assert a == b
    c = run(Simulator("gw-1", 3, seed=43), 900)
    assert a != c


def _line(**over: object) -> bytes:
    obj: dict[str, object] = {"charger_id": "CP-1", "ts": "2026-05-01T12:00:00Z", "values": {}}
    obj.update(over)
    return orjson.dumps(obj)


def test_jsonl_passes_transaction_fields_and_charger_info_through() -> None:
    info = {"vendor": "V", "model": "M", "serial": "S-1", "firmware": "1.2"}
    c = parse_line(
        _line(
            transaction_id="T-9",
            tx_event="ended",
            stop_reason="Remote",
            id_tag_hash="0" * 32,
            charger_info=info,
            values={"energy_kwh": 1.5},
        ),
        1,
    )
    body = orjson.loads(c.to_body())
    assert {k: body[k] for k in ("transaction_id", "tx_event", "stop_reason", "id_tag_hash")} == {
        "transaction_id": "T-9",
        "tx_event": "ended",
        "stop_reason": "Remote",
        "id_tag_hash": "0" * 32,
    }
    assert body["charger_info"] == info
    assert body["values"] == {"energy_wh": 1500.0}
    plain = orjson.loads(parse_line(_line(), 2).to_body())
    assert not {"tx_event", "stop_reason", "id_tag_hash", "charger_info"} & set(plain)


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"tx_event": "begun"}, "line 3: tx_event: Input should be 'started' or 'ended'"),
        ({"stop_reason": "not an id"}, "line 3: stop_reason: String should match pattern"),
        ({"id_tag_hash": "04A1B2C3"}, "line 3: id_tag_hash: String should match pattern"),
        ({"charger_info": "V"}, "line 3: charger_info: Input should be a valid dictionary"),
        ({"charger_info": {"vendor": "x" * 65}}, "line 3: charger_info.vendor: String should"),
        ({"charger_info": {"colour": "red"}}, "line 3: charger_info.colour: Extra inputs"),
    ],
)
def test_jsonl_refuses_bad_transaction_fields(over: dict[str, object], problem: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(_line(**over), 3)
    assert str(caught.value).startswith(problem)
