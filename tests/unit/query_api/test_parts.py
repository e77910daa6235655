"""Pure parts of query_api: the live mirror, the latest decision, cursors, charger state, ingest
parsing and numbering, content negotiation and HTML escaping, gap merging, stats rows."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from query_api import cursor
from query_api.acks import StoredAcks, parse_ack
from query_api.auth import identify
from query_api.handled import MAX_QUERIES, Handled, handled
from query_api.idempotency import IdempotencyKeys, parse_key
from query_api.ingest import numbered, parse_body, payloads
from query_api.latest.index import ChargerIndex
from query_api.latest.mirror import NEVER, LiveMirror
from query_api.latest.read import get_latest
from query_api.latest.snapshot import from_row
from query_api.latest.state import charger_state
from query_api.latest.stored import StoredLatest
from query_api.latest.sweep import confirm_mirror
from query_api.routes.fleet import FleetDaily, render_html, wants_html
from query_api.routes.pipeline import BridgeStatus, merge_gaps, public
from query_api.routes.stats import stats_from_row
from query_api.seqs import SeqAllocator
from query_api.settings import ApiSettings, Role
from telemetry_common.errors import ConfigError
from telemetry_common.influx_query import InfluxQueryError, InfluxUnavailable, Series
from telemetry_common.schema import MAX_BATCH_BYTES, Reading
from telemetry_common.topics import Topics

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NS = 1_777_636_800_000_000_000  # T in ns
TOPICS = Topics()
COLUMNS = ["time", "charger_id", "connector_id", "evse_id", "gateway_id", "power_w", "seq"]


class FakeInflux:
    def __init__(self, *answers: list[Series]) -> None:
        self.answers = list(answers)
        self.queries: list[str] = []

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.query(q)

    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        return self.answers.pop(0) if self.answers else []


def _live(charger: str, ts: datetime, seq: int, power: float = 1.0, gw: str = "gw-1") -> bytes:
    return orjson.dumps(
        {
            "charger_id": charger,
            "gateway_id": gw,
            "evse_id": 1,
            "connector_id": 1,
            "seq": seq,
            "ts": ts.isoformat(),
            "values": {"power_w": power},
        }
    )


def _row(ns: int, seq: int, power: float) -> Series:
    """cp1's newest stored point, as latest_per_charger_query answers (a series per charger)."""
    row = [ns, "cp1", "1", "1", "gw-1", power, seq]
    return Series("readings", COLUMNS, [row], {"charger_id": "cp1"})


def _settings(**kw: Any) -> ApiSettings:
    return ApiSettings(keys={"read": SecretStr("r" * 20)}, **kw)


# --- mirror ---------------------------------------------------------------------------------


def test_mirror_keeps_the_newest_value_per_charger() -> None:
    """A live message older than the held one (ts, then seq) does not replace it."""
    m = LiveMirror(TOPICS)
    assert m.apply("chargers/v1/live/cp1", _live("cp1", T, 5, 5.0), 1.0)
    assert not m.apply("chargers/v1/live/cp1", _live("cp1", T - timedelta(seconds=1), 9), 2.0)
    assert not m.apply("chargers/v1/live/cp1", _live("cp1", T, 4), 2.0)
    entry = m.get("cp1")
    assert entry is not None
    assert (entry.snapshot.seq, entry.snapshot.values, entry.received) == (5, {"power_w": 5.0}, 1.0)
    assert m.apply("chargers/v1/live/cp1", _live("cp1", T + timedelta(seconds=1), 6), 3.0)
    assert m.get("cp1") is not None
    assert len(m) == 1


def test_an_answer_asked_before_a_newer_live_value_arrived_does_not_confirm_it() -> None:
    """InfluxDB's answer to a question sent at t=100.0 (seq 1) says nothing about a live value
    that reached the mirror at t=100.05 (seq 2) while the question was out: that value stays
    unconfirmed, so it is checked again once settled instead of being trusted for
    LATEST_TRUST_S on the strength of an older check (a stored seq 3 whose live message was
    lost would otherwise be hidden). An answer asked after the value arrived confirms it."""
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/live/cp1", _live("cp1", T + timedelta(seconds=1), 2), 100.05)
    older = from_row("cp1", _row(NS, 1, 1.0).rows()[0])
    assert not m.offer(older, 100.0, checked=True)  # asked at 100.0, before seq 2 arrived
    entry = m.get("cp1")
    assert entry is not None
    assert (entry.snapshot.seq, entry.checked) == (2, NEVER)
    assert not m.offer(older, 100.1, checked=True)  # asked after it arrived: confirms it
    assert m.get("cp1") is not None
    assert entry.checked == 100.1


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("chargers/v1/live/cp1", b"not json"),
        ("chargers/v1/live/cp1", _live("cp2", T, 1)),  # another charger's value
        ("chargers/v1/live/bad'id", _live("bad'id", T, 1)),
        ("chargers/v1/live/cp1", orjson.dumps({"charger_id": "cp1", "values": {}})),
        ("other/live/cp1", _live("cp1", T, 1)),
        ("chargers/v1/gw-1/state", b'{"state": "sleeping"}'),
    ],
)
def test_mirror_refuses_invalid_messages(topic: str, payload: bytes) -> None:
    """Invalid payloads, mismatched ids and foreign topics are counted and ignored."""
    m = LiveMirror(TOPICS)
    assert not m.apply(topic, payload, 0.0)
    assert len(m) == 0
    assert m.refused == 1
    assert m.gateway_state("gw-1") is None


def test_mirror_follows_gateway_state_and_cleared_topics() -> None:
    """Birth/will set the gateway's state; an empty retained payload clears the entry."""
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/gw-1/state", b'{"state": "offline", "ts": "2026-05-01T12:00:00Z"}', 0)
    assert m.gateway_state("gw-1") == "offline"
    m.apply("chargers/v1/gw-1/state", b'{"state": "online"}', 0)
    assert m.gateway_state("gw-1") == "online"
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 1), 0)
    assert m.apply("chargers/v1/live/cp1", b"", 0)
    assert m.get("cp1") is None


def test_mirror_is_bounded() -> None:
    """Beyond max_chargers new chargers are not held (counted), known ones still update."""
    m = LiveMirror(TOPICS, max_chargers=1)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 1), 0)
    assert not m.apply("chargers/v1/live/cp2", _live("cp2", T, 1), 0)
    assert m.full == 1
    assert m.apply("chargers/v1/live/cp1", _live("cp1", T + timedelta(seconds=1), 2), 0)


# --- the latest decision --------------------------------------------------------------------


async def test_latest_asks_influx_while_the_live_value_is_young_and_serves_the_newer() -> None:
    """Within live_settle_s the store is asked; a newer stored reading wins over the mirror."""
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 1), 100.0)
    influx = FakeInflux([_row(NS + 10**9, 2, 2.0)])
    found = await get_latest(
        "cp1", mirror=m, stored=StoredLatest(influx), live=True, settings=_settings(), mono=100.5
    )
    assert found is not None
    assert (found[0].seq, found[1]) == (2, "influxdb")
    assert len(influx.queries) == 1
    entry = m.get("cp1")
    assert entry is not None
    assert entry.snapshot.seq == 2  # kept in the mirror


async def test_latest_serves_memory_once_settled_and_checked_then_checks_again() -> None:
    """After one check past the settle time memory answers until latest_trust_s has passed."""
    settings = _settings(live_settle_s=2.0, latest_trust_s=30.0)
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 1), 100.0)
    influx = FakeInflux([_row(NS, 1, 1.0)], [_row(NS, 1, 1.0)])
    args: dict[str, Any] = {
        "mirror": m, "stored": StoredLatest(influx), "live": True, "settings": settings
    }  # fmt: skip
    assert (await get_latest("cp1", mono=103.0, **args) or (None, ""))[1] == "mirror"
    assert len(influx.queries) == 1  # first settled request: checked
    for mono in (104.0, 120.0, 133.0):
        assert (await get_latest("cp1", mono=mono, **args) or (None, ""))[1] == "mirror"
    assert len(influx.queries) == 1
    await get_latest("cp1", mono=133.5, **args)
    assert len(influx.queries) == 2  # trust expired


async def test_latest_without_a_broker_session_always_reads_influx() -> None:
    """live=False (broker down): the mirror is not trusted; InfluxDB is asked every time."""
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 1), 0.0)
    influx = FakeInflux()
    stored = StoredLatest(influx)
    for mono in (100.0, 200.0):
        found = await get_latest(
            "cp1", mirror=m, stored=stored, live=False, settings=_settings(), mono=mono
        )
        assert found is not None
        assert found[1] == "mirror"  # InfluxDB had nothing newer
    assert len(influx.queries) == 2


async def test_latest_unknown_everywhere_is_none() -> None:
    """No mirror entry and no stored row: None (the route answers 404)."""
    found = await get_latest(
        "cp1", mirror=LiveMirror(TOPICS), stored=StoredLatest(FakeInflux()), live=True,
        settings=_settings(), mono=0.0,
    )  # fmt: skip
    assert found is None


class GatedInflux(FakeInflux):
    """Holds each query until the test opens the gate; answers cp1..cpN's newest points."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        await self.gate.wait()
        return [
            Series("readings", COLUMNS, [[NS, c, "1", "1", "gw-1", 1.0, n]], {"charger_id": c})
            for n, c in enumerate(sorted(set(re.findall(r"'(cp\d+)'", q))))
        ]


async def test_stored_lookups_share_a_query_and_never_join_one_already_sent() -> None:
    """Lookups made together go in one query (one per charger, however many ask); lookups made
    while the queries in flight run wait for the next one, which asks them all at once."""
    influx = GatedInflux()
    stored = StoredLatest(influx, in_flight=1)
    first = [asyncio.ensure_future(stored.newest(c)) for c in ("cp1", "cp2", "cp1")]
    await asyncio.sleep(0.01)
    assert len(influx.queries) == 1
    assert re.findall(r"'(cp\d+)'", influx.queries[0]) == ["cp1", "cp2"]
    later = [asyncio.ensure_future(stored.newest(f"cp{i}")) for i in range(1, 40)]
    await asyncio.sleep(0.01)
    assert len(influx.queries) == 1  # the one in flight is not joined
    influx.gate.set()
    done = await asyncio.gather(*first, *later)
    assert len(influx.queries) == 2
    assert all(s is not None for s in done)
    assert [s.charger_id for s in done[:3] if s is not None] == ["cp1", "cp2", "cp1"]


class RefusingInflux(FakeInflux):
    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        raise InfluxQueryError("refused", status=400)


async def test_stored_lookup_errors_reach_every_waiter_and_unknown_chargers_are_none() -> None:
    """A failed query fails each lookup it carried (and the next query is made); a charger
    without a series in the answer has nothing stored."""
    failing = RefusingInflux()
    stored = StoredLatest(failing)
    results = await asyncio.gather(
        stored.newest("cp1"), stored.newest("cp2"), return_exceptions=True
    )
    assert all(isinstance(r, InfluxQueryError) for r in results)
    assert len(failing.queries) == 1
    assert await StoredLatest(FakeInflux([])).newest("cp9") is None


def _newest(*rows: tuple[str, int, int]) -> list[Series]:
    """The answer of newest_per_charger_query: one series per (charger, gateway)."""
    return [
        Series("readings", ["time", "seq"], [[ns, seq]], {"charger_id": c, "gateway_id": "gw-1"})
        for c, ns, seq in rows
    ]


def _state(*rows: tuple[str, int, int]) -> list[Series]:
    """The answer of newest_chargers_state_query: one point per (charger, bridge)."""
    columns = ["time", "bridge", "charger_id", "gateway_id", "seq", "ts"]
    return [
        Series("newest_chargers", columns, [[0, "b1", c, "gw-1", seq, ns] for c, ns, seq in rows])
    ]


async def test_sweep_confirms_settled_values_in_two_queries_and_memory_then_answers() -> None:
    """One sweep (the newest-stored state and the recent window: two queries) confirms every
    settled mirror value InfluxDB holds nothing newer for (same or older, or nothing at all);
    afterwards latest answers those from memory without a query."""
    settings = _settings(live_settle_s=2.0, latest_trust_s=30.0)
    m = LiveMirror(TOPICS)
    for c in ("cp1", "cp2", "cp3"):
        m.apply(f"chargers/v1/live/{c}", _live(c, T, 5), 100.0)
    influx = FakeInflux([], _newest(("cp1", NS, 5), ("cp2", NS - 10**9, 4)))
    confirmed, behind = await confirm_mirror(
        ChargerIndex(10.0), m, influx, settle_s=2.0, mono=103.0
    )
    assert (confirmed, behind) == (3, 0)  # cp3: nothing stored, so nothing newer either
    assert len(influx.queries) == 2
    for c in ("cp1", "cp2", "cp3"):
        found = await get_latest(
            c, mirror=m, stored=StoredLatest(influx), live=True, settings=settings, mono=120.0
        )
        assert found is not None
        assert found[1] == "mirror"
    assert len(influx.queries) == 2


async def test_sweep_leaves_values_behind_influx_and_young_values_unconfirmed() -> None:
    """A value InfluxDB holds a newer reading for (later ts, or same ts and higher seq) and a
    value younger than the settle time stay unconfirmed: their next latest asks InfluxDB."""
    m = LiveMirror(TOPICS)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 5), 100.0)
    m.apply("chargers/v1/live/cp2", _live("cp2", T, 5), 100.0)
    m.apply("chargers/v1/live/cp3", _live("cp3", T, 5), 102.5)  # arrived 0.5 s before the sweep
    # cp1 and cp3 in the newest-stored state, cp2 in the recent window
    influx = FakeInflux(_state(("cp1", NS + 10**6, 6), ("cp3", NS, 5)), _newest(("cp2", NS, 6)))
    confirmed, behind = await confirm_mirror(
        ChargerIndex(10.0), m, influx, settle_s=2.0, mono=103.0
    )
    assert (confirmed, behind) == (0, 2)
    for c in ("cp1", "cp2", "cp3"):
        entry = m.get(c)
        assert entry is not None
        assert entry.checked == float("-inf"), c


async def test_sweep_with_nothing_settled_asks_nothing() -> None:
    """An empty or entirely young mirror costs InfluxDB no query."""
    m = LiveMirror(TOPICS)
    influx = FakeInflux()
    assert await confirm_mirror(ChargerIndex(10.0), m, influx, settle_s=2.0, mono=0.0) == (0, 0)
    m.apply("chargers/v1/live/cp1", _live("cp1", T, 5), 100.0)
    assert await confirm_mirror(ChargerIndex(10.0), m, influx, settle_s=2.0, mono=101.0) == (0, 0)
    assert influx.queries == []


# --- state, cursors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "gateway", "state"),
    [
        (0.0, None, "online"),
        (300.0, "online", "online"),
        (300.1, "online", "stale"),
        (3600.0, None, "stale"),
        (3600.1, None, "offline"),
        (1.0, "offline", "offline"),
    ],
)
def test_charger_state_thresholds(age: float, gateway: str | None, state: str) -> None:
    """online up to stale_after_s, stale up to offline_after_s; a gateway will is offline."""
    assert charger_state(age, gateway, stale_after_s=300, offline_after_s=3600) == state


KEY = b"k" * 32


def test_cursor_round_trip_and_refusals() -> None:
    """A cursor decodes for its own kind and query only; garbage is a CursorError."""
    cursors = cursor.Cursors(KEY)
    q = cursor.fingerprint("history", "cp1", ["power_w"], None, None)
    text = cursors.encode("history", q, {"t": 5})
    assert cursors.decode(text, "history", q)["t"] == 5
    with pytest.raises(cursor.CursorError):
        cursors.decode(text, "chargers", q)
    with pytest.raises(cursor.CursorError):
        cursors.decode(text, "history", cursor.fingerprint("history", "cp2", None, None, None))
    for bad in ("", "!!!", "e30", "x" * 5000, ".", "e30.", ".AAAA", "a.b.c"):
        with pytest.raises(cursor.CursorError):
            cursors.decode(bad, "history", q)


def test_cursor_is_signed_a_flipped_byte_or_another_key_is_refused() -> None:
    """The tag covers the encoded body: any change to body or tag, or a cursor signed with
    another key (another process without CURSOR_SECRET), is refused."""
    cursors = cursor.Cursors(KEY)
    q = cursor.fingerprint("history", "cp1", None, None, None)
    text = cursors.encode("history", q, {"t": 5, "o": 1, "e": 9})
    assert cursors.decode(text, "history", q) == {"k": "history", "q": q, "t": 5, "o": 1, "e": 9}
    for i in range(len(text)):
        if text[i] == ".":
            continue
        flipped = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
        with pytest.raises(cursor.CursorError):
            cursors.decode(flipped, "history", q)
    with pytest.raises(cursor.CursorError, match="signature"):
        cursor.Cursors(b"another key, 32 bytes long......").decode(text, "history", q)
    assert cursor.Cursors(KEY).decode(text, "history", q)["t"] == 5  # same key: accepted


def test_unsigned_or_forged_cursor_is_refused() -> None:
    """An old-format cursor (base64url JSON without a tag) and a body re-signed with a guessed
    tag are refused, though the JSON names the right kind and query."""
    cursors = cursor.Cursors(KEY)
    q = cursor.fingerprint("history", "cp1", None, None, None)
    body = orjson.dumps({"k": "history", "q": q, "t": 0, "o": 0, "e": 10**18})
    old = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    with pytest.raises(cursor.CursorError):
        cursors.decode(old, "history", q)
    with pytest.raises(cursor.CursorError, match="signature"):
        cursors.decode(old + "." + "A" * 22, "history", q)
    genuine = cursors.encode("history", q, {"t": 0, "o": 0, "e": 10})
    with pytest.raises(cursor.CursorError, match="signature"):
        cursors.decode(old + "." + genuine.split(".")[1], "history", q)


def test_cursor_key_must_be_long_enough() -> None:
    """An empty or short key would make the tag guessable."""
    with pytest.raises(ValueError, match="key"):
        cursor.Cursors(b"short")


# --- ingest ---------------------------------------------------------------------------------


def _parse(body: object, now: datetime = T) -> Any:
    return parse_body(orjson.dumps(body), "http-1", now=now, max_future=timedelta(minutes=5))


def test_ingest_accepts_the_three_shapes_and_arrays() -> None:
    """Batch, single reading, simple shape and an array of both become schema readings."""
    reading = {"charger_id": "cp1", "ts": "2026-05-01T11:59:00Z", "values": {"power_w": 1}}
    simple = {"chargerId": "cp2", "timestamp": "2026-05-01T11:59:00Z",
              "payload": {"power_w": 2.5, "status": "Charging"}}  # fmt: skip
    assert len(_parse({"readings": [reading, reading], "gateway_id": "http-1"}).readings) == 2
    assert _parse(reading).readings[0].values == {"power_w": 1.0}
    got = _parse(simple).readings[0]
    assert (got.charger_id, got.status, got.values) == ("cp2", "Charging", {"power_w": 2.5})
    assert [r.charger_id for r in _parse([reading, simple]).readings] == ["cp1", "cp2"]
    assert _parse([reading]).errors == []


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"readings": [], "gateway_id": "other"}, "gateway_mismatch"),
        ({"readings": [], "schema": "v0"}, "invalid_schema"),
        ({"readings": "x"}, "invalid_envelope"),
        ([], "empty"),
        (5, "invalid_body"),
        ([{"charger_id": "cp1", "ts": "2026-05-01T13:00:00Z", "values": {}}], "ts_in_future"),
        ([{"charger_id": "cp1", "ts": "2026-05-01T12:00:00", "values": {}}], "timezone_aware"),
        (
            [{"charger_id": "a b", "ts": "2026-05-01T12:00:00Z", "values": {}}],
            "string_pattern_mismatch",
        ),
        ([{"charger_id": "c", "ts": "2026-05-01T12:00:00Z", "values": {"seq": 1}}], "value_key"),
        ([{"chargerId": "c", "timestamp": "x", "payload": 3}], "invalid_reading"),
        ([{"chargerId": "c", "timestamp": "x", "payload": {}, "more": 1}], "invalid_reading"),
    ],
)
def test_ingest_errors_name_the_reading_and_the_problem(body: object, kind: str) -> None:
    """Each invalid body or reading yields an error of a machine-readable type; nothing passes."""
    parsed = _parse(body)
    assert parsed.readings == [] or parsed.errors
    assert kind in {e["type"] for e in parsed.errors}


def test_ingest_collects_every_invalid_reading_with_its_index() -> None:
    """All errors are reported at once, each with the index of its reading."""
    ok = {"charger_id": "cp1", "ts": "2026-05-01T12:00:00Z", "values": {"power_w": 1}}
    bad = {"charger_id": "cp1", "ts": "2026-05-01T12:00:00Z", "values": {"Power": 1}}
    parsed = _parse([ok, bad, ok, "x"])
    assert sorted({e["index"] for e in parsed.errors}) == [1, 3]
    assert len(parsed.readings) == 2


def test_ingest_refuses_more_than_a_batch() -> None:
    """More than 5,000 readings: one error, no per-reading validation."""
    one = {"charger_id": "cp1", "ts": "2026-05-01T12:00:00Z", "values": {}}
    parsed = _parse([one] * 5001)
    assert [e["type"] for e in parsed.errors] == ["too_many_readings"]


def test_numbering_and_payload_split() -> None:
    """Readings get consecutive seqs; payloads stay under 256 KiB, in order, none lost."""
    values = {f"v{i:02d}_w": float(i) for i in range(60)}
    base = Reading.model_validate_json(
        orjson.dumps(
            {"charger_id": "cp1", "seq": 0, "ts": "2026-05-01T12:00:00Z", "values": values}
        )
    )
    readings = numbered([base] * 400, 41)
    assert [r.seq for r in readings[:3]] == [41, 42, 43]
    parts = payloads("http-1", readings)
    assert len(parts) > 1
    assert all(len(p) <= MAX_BATCH_BYTES for _, p in parts)
    assert [r.seq for chunk, _ in parts for r in chunk] == list(range(41, 441))


async def test_seq_allocator_continues_from_influx_and_the_file(tmp_path: Path) -> None:
    """The first seq follows the higher of InfluxDB's (the newest-stored state's over every
    bridge and epoch, and the recent window's) and the file's; a release of the last
    reservation is reused, of an earlier one (a retry's seqs) not; the file survives a new
    allocator."""
    state = tmp_path / "seq.json"
    columns = ["time", "bridge", "epoch", "gateway_id", "newest_ts", "high", "high_ts"]
    marks = [[0, "b1", None, "gw", 9, 5, 9], [0, "b2", None, "gw", 10, 7, 10]]
    known = Series("newest_gateways", columns, marks)
    recent = Series("readings", ["time", "seq"], [[0, 6]])
    seqs = SeqAllocator(FakeInflux([known], [recent]), state)
    async with seqs.lock("gw"):
        assert await seqs.reserve("gw", 3) == 8
        assert await seqs.reserve("gw", 2) == 11
        await seqs.release("gw", 11, 13)
        assert await seqs.reserve("gw", 1) == 11
        await seqs.release("gw", 8, 11)  # not the last reservation: those stay used
        assert await seqs.reserve("gw", 1) == 12
    assert orjson.loads(state.read_bytes()) == {"gw": 12}
    again = SeqAllocator(FakeInflux([known]), state)
    assert await again.reserve("gw", 1) == 13
    fresh = SeqAllocator(FakeInflux(), None)
    assert await fresh.reserve("other", 1) == 1
    # Neither the state nor the window knows it: all its history is asked (an older database).
    older = FakeInflux([], [], [Series("readings", ["time", "seq"], [[0, 99]])])
    assert await SeqAllocator(older, None).reserve("gw-old", 1) == 100
    assert "time >= " not in older.queries[-1]


async def test_idempotency_keys_survive_a_restart_through_their_journal(tmp_path: Path) -> None:
    """Keys, their completion and their drop are journaled and read back by a new store; a torn
    last line is skipped; expired keys are not read back."""
    journal = tmp_path / "seq.json.keys"
    keys = IdempotencyKeys(journal, ttl_s=60, max_keys=10)
    a = await keys.add("gw", "key-a", "d1", 1, 3)
    b = await keys.add("gw", "key-b", "d2", 4, 1)
    c = await keys.add("gw2", "key-a", "d3", 1, 1)
    await keys.complete(a)
    await keys.drop(c)
    with journal.open("ab") as fh:
        fh.write(b'{"g": "gw", "k": "torn')
    again = IdempotencyKeys(journal, ttl_s=60, max_keys=10)
    got_a, got_b = again.get("gw", "key-a"), again.get("gw", "key-b")
    assert got_a is not None
    assert got_b is not None
    assert (got_a.first_seq, got_a.count, got_a.digest, got_a.done) == (1, 3, "d1", True)
    assert (got_b.first_seq, got_b.done, got_b.busy) == (4, False, False)
    assert again.get("gw2", "key-a") is None
    assert b.busy  # the original's request still holds it
    expired = IdempotencyKeys(journal, ttl_s=60, max_keys=10)
    for entry in (expired.get("gw", "key-a"), expired.get("gw", "key-b")):
        assert entry is not None
        entry.expires = 0
    assert expired.get("gw", "key-a") is None


async def test_idempotency_keys_are_bounded_and_the_journal_compacted(tmp_path: Path) -> None:
    """Beyond MAX_KEYS the oldest key not in use goes; the journal is rewritten once it holds
    twice the keys kept (at least 1,000 lines), and reads back the same keys."""
    journal = tmp_path / "keys"
    keys = IdempotencyKeys(journal, ttl_s=3600, max_keys=3)
    held = await keys.add("gw", "key-0", "d", 1, 1)  # busy: a request still holds it
    for i in range(1, 1200):
        entry = await keys.add("gw", f"key-{i}", "d", i + 1, 1)
        entry.busy = False
    assert len(keys) == 3
    assert keys.get("gw", "key-0") is held
    assert keys.get("gw", "key-1") is None
    assert keys.get("gw", "key-1197") is None
    assert len(journal.read_bytes().splitlines()) < 1000
    again = IdempotencyKeys(journal, ttl_s=3600, max_keys=3)
    # read back: no request holds key-0 any more, and the newest MAX_KEYS are kept
    names = ("key-0", "key-1196", "key-1197", "key-1198", "key-1199")
    assert [k for k in names if again.get("gw", k)] == ["key-1197", "key-1198", "key-1199"]


def test_idempotency_key_header() -> None:
    """8 to 128 characters of the allowed set; RFC 8941 quotes are taken off; None if absent."""
    assert parse_key(None) is None
    assert (
        parse_key("8e03978e-40d5-43e8-bc93-6894a57f9324") == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    assert parse_key('"abc:def+/=~_."') == "abc:def+/=~_."
    for bad in ("", "seven77", "x" * 129, "with space1", "semi;colon", '"unterminated', "é" * 10):
        with pytest.raises(ValueError, match="Idempotency-Key"):
            parse_key(bad)


def test_stored_acknowledgements_are_parsed_strictly() -> None:
    """Only {"epoch": null, "seqs": [[first, last], ...]} with integers first <= last counts;
    the store listens to its ingest gateways' topics only."""
    assert parse_ack(b'{"epoch": null, "seqs": [[1, 3], [7, 7]]}') == [(1, 3), (7, 7)]
    mine = b'{"epoch": "0123456789abcdef", "seqs": [[1, 1]]}'
    assert parse_ack(mine, "0123456789abcdef") == [(1, 1)]
    assert parse_ack(mine, "fedcba9876543210") is None
    assert parse_ack(b'{"seqs": []}') == []
    for bad in (b"[]", b"nope", b'{"epoch": "0123456789abcdef", "seqs": [[1, 1]]}',
                b'{"epoch": null, "seqs": [[1]]}', b'{"epoch": null, "seqs": [[2, 1]]}',
                b'{"epoch": null, "seqs": [[1.0, 2]]}', b'{"epoch": null, "seqs": [[true, 2]]}',
                b'{"epoch": null}'):  # fmt: skip
        assert parse_ack(bad) is None, bad
    acks = StoredAcks(Topics("r/v1"), ["a", "b"])
    assert acks.subscriptions == ("r/v1/a/stored", "r/v1/b/stored")
    assert acks.handles("r/v1/a/stored")
    assert not acks.handles("r/v1/c/stored")


class CountingInflux:
    """Answers count_seq_range_query from a set of stored seqs (or raises ``error``)."""

    def __init__(self, stored: set[int], error: Exception | None = None) -> None:
        self.stored = stored
        self.error = error
        self.queries = 0

    async def query(self, q: str) -> list[Series]:
        self.queries += 1
        if self.error is not None:
            raise self.error
        m = re.search(r'"seq" >= (\d+) AND "seq" <= (\d+)', q)
        assert m is not None, q
        n = sum(1 for s in self.stored if int(m[1]) <= s <= int(m[2]))
        return [Series("readings", ["time", "count"], [[0, n]])] if n else []

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.query(q)


async def test_handled_names_the_readings_influx_does_not_hold() -> None:
    """All stored: one count query; some missing: found by halving, as request indices; too
    many to find within MAX_QUERIES: only the count; InfluxDB down: nothing known."""
    base = Reading.model_validate_json(
        orjson.dumps({"charger_id": "cp1", "seq": 0, "ts": "2026-05-01T12:00:00Z", "values": {}})
    )
    readings = numbered([base] * 10, 41)
    every = set(range(41, 51))
    influx = CountingInflux(every)
    assert await handled(influx, "gw", readings) == Handled(10, [])
    assert influx.queries == 1
    influx = CountingInflux(every - {43, 47})
    result = await handled(influx, "gw", readings)
    assert (result.stored, result.not_stored) == (8, [2, 6])
    many = numbered([base] * 400, 1)
    influx = CountingInflux(set(range(1, 401, 2)))
    result = await handled(influx, "gw", many)
    assert (result.stored, result.not_stored, influx.queries) == (200, None, MAX_QUERIES)
    down = CountingInflux(every, InfluxUnavailable("down"))
    result = await handled(down, "gw", readings)
    assert (result.stored, result.not_stored) == (None, None)


def test_seq_file_must_be_an_object(tmp_path: Path) -> None:
    """A damaged seq file stops the API at start with the setting's name."""
    state = tmp_path / "seq.json"
    state.write_text("[1]")
    with pytest.raises(ConfigError, match="INGEST_SEQ_FILE"):
        SeqAllocator(FakeInflux(), state)


# --- auth, settings -------------------------------------------------------------------------


def test_identify_binds_ingest_keys_to_gateways() -> None:
    """Role keys and per-gateway ingest keys are told apart; admin ingests as the default."""
    keys: dict[Role, bytes] = {"read": b"rk", "admin": b"ak"}
    extra = {"site-a": b"ka"}
    assert identify("rk", keys, extra, "http-ingest") == identify("rk", keys, {}, "x")
    read = identify("rk", keys, extra, "http-ingest")
    assert read is not None
    assert (read.role, read.gateway_id) == ("read", None)
    admin = identify("ak", keys, extra, "http-ingest")
    assert admin is not None
    assert admin.gateway_id == "http-ingest"
    site = identify("ka", keys, extra, "http-ingest")
    assert site is not None
    assert (site.role, site.gateway_id) == ("ingest", "site-a")
    assert identify("kb", keys, extra, "http-ingest") is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"ingest_gateway": "live"},
        {"ingest_keys": {"telemetry-bridge": SecretStr("k" * 20)}},
        {"ingest_keys": {"gw": SecretStr("r" * 20)}},  # the read key again
        {"state_stale_after_s": 600, "state_offline_after_s": 60},
        {"stats_default_range": timedelta(days=1826)},
    ],
)
def test_settings_refuse_unsafe_ingest_and_state_settings(overrides: dict[str, Any]) -> None:
    """Reserved gateway ids, shared keys and inverted thresholds are refused at start."""
    with pytest.raises(ConfigError):
        _settings(**overrides)


def test_cursor_secret_too_short_is_refused() -> None:
    """CURSOR_SECRET signs the cursors: a short one is refused at start."""
    with pytest.raises(ValueError, match="cursor_secret"):
        _settings(cursor_secret=SecretStr("too-short"))
    assert _settings(cursor_secret=SecretStr("c" * 32)).cursor_secret is not None


# --- fleet HTML, gaps, stats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.8", True),
        ("text/html;q=0", False),
    ],
)
def test_content_negotiation(accept: str | None, html: bool) -> None:
    """HTML only when the client prefers it to JSON (browsers), JSON for */* and APIs."""
    assert wants_html(accept) is html


def test_html_escapes_every_value() -> None:
    """Markup in a value is escaped, never rendered."""
    page = render_html(FleetDaily(date="<script>", total=3, by_status={"<b>x</b>": 2}, no_status=1))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<td>2</td>" in page


def test_gap_merge_prefers_confirmed_and_lists_bridges() -> None:
    """Gaps from several bridges are merged per gateway and range; confirmed beats suspected."""
    a = BridgeStatus(url="a", reachable=True, status={"seq_gaps": {"gw": [
        {"first_seq": 4, "last_seq": 9, "missing": None, "state": "suspected"}]}})  # fmt: skip
    b = BridgeStatus(url="b", reachable=True, status={"seq_gaps": {"gw": [
        {"first_seq": 4, "last_seq": 9, "missing": 2, "state": "confirmed"},
        {"first_seq": 1, "last_seq": 1, "missing": None, "state": "suspected"},
        {"bad": 1}]}})  # fmt: skip
    down = BridgeStatus(url="c", reachable=False, error="refused")
    merged = merge_gaps([a, b, down])
    assert [(g.first_seq, g.state, g.missing, g.bridges) for g in merged["gw"]] == [
        (1, "suspected", None, ["b"]),
        (4, "confirmed", 2, ["a", "b"]),
    ]


def test_gaps_of_two_outbox_epochs_are_not_merged() -> None:
    """The same seq range in two epochs (a recreated outbox) is two gaps."""
    a = BridgeStatus(url="a", reachable=True, status={"seq_gaps": {"gw": [
        {"first_seq": 4, "last_seq": 9, "missing": 6, "state": "confirmed", "epoch": "aa" * 8},
        {"first_seq": 4, "last_seq": 9, "missing": 6, "state": "confirmed", "epoch": "bb" * 8},
    ]}})  # fmt: skip
    merged = merge_gaps([a])
    assert sorted(g.epoch or "" for g in merged["gw"]) == ["aa" * 8, "bb" * 8]


def test_a_bridges_status_loses_its_secret_names() -> None:
    """A status document with a raw client id and share group (a bridge of an older version)
    shows only their public names; everything else is passed through."""
    token = "0123456789abcdef0123456789abcdef"
    doc = {
        "client_id": f"telemetry-bridge-1-{token}",
        "share_group": f"processors-{token}",
        "ready": True,
        "seq_gaps": {"gw": []},
    }
    shown = public(doc)
    assert token not in repr(shown)
    assert shown["client_id"].startswith("telemetry-bridge-1~")
    assert shown["share_group"].startswith("processors~")
    assert (shown["ready"], shown["seq_gaps"]) == (True, {"gw": []})
    assert public(shown) == shown


def test_stats_row_drops_meta_fields_and_fills_absent_fields() -> None:
    """Wildcard columns lose seq/status; a requested field without values has count 0."""
    row = {"time": 0, "count_power_w": 3, "mean_power_w": 2.0, "median_power_w": 2.0,
           "stddev_power_w": 1.0, "min_power_w": 1.0, "max_power_w": 3.0, "count_seq": 3,
           "count_status": 3, "mean_seq": 2.0}  # fmt: skip
    assert set(stats_from_row(row, None)) == {"power_w"}
    got = stats_from_row(row, ["power_w", "soc_pct"])
    assert got["power_w"].max == 3.0
    assert got["soc_pct"].count == 0
    assert got["soc_pct"].mean is None
