"""Sessions and the charger registry through the API, against a real InfluxDB 1.x.

Session points are written into ``keep.sessions`` as the sessions job writes them, registry
points into ``keep.chargers`` as the bridge does, readings into ``readings``
(tests/support/sessions_data.py): the API must read them back per the contract
(docs/design.md#sessions, the REST API table): a charger's sessions in a window and by state,
the fleet export paged by signed cursor (many sessions sharing one start included) and as CSV
streamed page by page, a session's power curve of its own connector, the chargers' identity and
a charger's connectors with the active session's energy so far.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from query_api import sessions as sessions_read
from query_api.app import create_app
from query_api.sessions import COLUMNS, MAX_KEYS
from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxQLClient, Series
from telemetry_common.schema import format_ts
from telemetry_common.settings import InfluxSettings
from tests.support.fixtures import InfluxInfo
from tests.support.rollups import Bucket, create_rollup_policies, write_lines
from tests.support.sessions_data import (
    charger_line,
    create_keep,
    ns,
    session,
    session_line,
    write_keep,
)

pytestmark = pytest.mark.integration

READ, INGEST = "integration-read-key-sessions", "integration-ingest-key-sessions"
CP = "gw-1-cp001"  # sessions, readings on two connectors, registry points
OTHER = "gw-1-cp002"  # readings only
BOOTED = "gw-2-cp003"  # a registry point only
SUSPENDED = "gw-1-cp010"  # an active OCPP session whose newest reading is a SuspendedEV status
TIES = "gw-ties"  # the gateway of the many sessions that share one start
N_TIES = MAX_KEYS + 44  # more than a cursor carries digests of
M = timedelta(minutes=1)


@dataclass(frozen=True)
class Seeded:
    url: str
    database: str
    now: datetime
    sessions: list[dict[str, Any]]  # every non-superseded session written
    curve: dict[int, list[float]]  # connector -> power_w per minute of CP's ended session t-2
    curve_start: datetime
    old_start: datetime  # t-60's start, older than the raw readings are kept
    old_buckets: list[Bucket]  # its connector's 1-minute rollups


def _influxql(url: str, statement: str) -> None:
    httpx.post(f"{url}/query", data={"q": statement}, timeout=10.0).raise_for_status()


def _reading(
    charger: str, conn: int, ts: datetime, seq: int, values: dict[str, float], **text: str
) -> str:
    fields = [f"{k}={v!r}" for k, v in sorted(values.items())] + [f"seq={seq}i"]
    fields += [f'{k}="{v}"' for k, v in sorted(text.items())]
    return (
        f"readings,charger_id={charger},connector_id={conn},evse_id=1,gateway_id=gw-1 "
        f"{','.join(fields)} {ns(ts)}"
    )


@pytest.fixture(scope="module")
def seeded(influxd: InfluxInfo) -> Iterator[Seeded]:
    database = f"test_{uuid.uuid4().hex[:12]}"
    url = influxd.url
    _influxql(url, f'CREATE DATABASE "{database}"')
    try:
        create_keep(url, database)
        now = datetime.now(UTC).replace(microsecond=0)
        day = timedelta(days=1)
        s: list[dict[str, Any]] = []
        # CP: three ended sessions in the last 10 days, one 40 days ago, one active now.
        s.append(session(CP, "t-old", now - 40 * day, ended_at=now - 40 * day + 2 * M * 30))
        s.append(
            session(CP, "t-1", now - 9 * day, ended_at=now - 9 * day + 60 * M,
                    stop_reason="EVDisconnected", flags="seq_gap,energy_suspect")
        )  # fmt: skip
        curve_start = now - 2 * day
        s.append(
            session(CP, "t-2", curve_start, ended_at=curve_start + 19 * M, energy_wh=1234.5,
                    id_tag_hash="ab" * 16, stop_reason="Local")
        )  # fmt: skip
        s.append(session(CP, "t-3", now - 3 * day, connector_id=2, ended_at=now - 3 * day + M))
        active_start = now - 30 * M
        s.append(session(CP, "t-4", active_start, meter_start_wh=20_000.0, energy_wh=900.0))
        # t-60: 60 days ago (raw readings are gone then: 1-minute rollups only), 3 hours long,
        # starting 30 s into a minute.
        old_start = (now - 60 * day).replace(second=30)
        s.append(session(CP, "t-60", old_start, ended_at=old_start + 180 * M))
        # The fleet: other chargers and gateways; a formula-looking text; many ties.
        tie_at = now - 5 * day + timedelta(milliseconds=123)
        for i in range(N_TIES):
            s.append(session(f"tie-{i:03d}", f"x{i}", tie_at, gateway_id=TIES, ended_at=tie_at + M))
        s.append(
            session("-evil", "=1+2", now - 4 * day, gateway_id="gw-3", ended_at=now - 4 * day + M,
                    stop_reason="@SUM(A1)")
        )  # fmt: skip
        for i in range(12):
            s.append(
                session(f"gw-2-cp{i:03d}", f"g{i}", now - 6 * day + i * 7 * M, gateway_id="gw-2",
                        ended_at=now - 6 * day + i * 7 * M + 5 * M)
            )  # fmt: skip
        s.append(session(SUSPENDED, "t-s", now - 40 * M, meter_start_wh=1000.0, energy_wh=300.0))
        lines = [session_line(x) for x in s]
        # t-1 was first computed with a later start: that point is superseded, never read.
        lines.append(
            session_line(
                session(
                    CP,
                    "t-1",
                    now - 9 * day + 5 * M,
                    ended_at=now - 9 * day + 60 * M,
                    state="superseded",
                )
            )
        )
        # The registry: CP booted twice (the newest point, without a serial, is its identity).
        lines += [
            charger_line(CP, now - 20 * day, "gw-1", vendor="Old", model="M1", serial="S1",
                         firmware="0.9"),
            charger_line(CP, now - 2 * day, "gw-1", vendor="ACME", model="Wallbox 22",
                         firmware="1.4.2"),
            charger_line(BOOTED, now - day, "gw-2", vendor="Volt", model="V", serial="S3",
                         firmware="2.0"),
        ]  # fmt: skip
        write_keep(url, database, lines)
        # Readings: t-2's minutes on connector 1 and, at other powers, connector 2; the active
        # session's on connector 1; a transaction the job has not computed on connector 2; and
        # an idle connector 3. OTHER has readings only.
        readings: list[str] = []
        curve: dict[int, list[float]] = {1: [], 2: []}
        seq = 0
        for k in range(20):
            for conn, base in ((1, 7000.0), (2, 100.0)):
                for j, off in enumerate((0, 20, 40)):
                    seq += 1
                    p = base + 10 * k + j
                    curve[conn].append(p)
                    ts = curve_start + k * M + timedelta(seconds=off)
                    readings.append(_reading(CP, conn, ts, seq, {"power_w": p}))
        for k in range(5):
            seq += 1
            values = {"power_w": 11_000.0 + k, "energy_wh": 20_000.0 + 200 * k}
            status = {"status": "Charging"} if k < 4 else {}  # the newest carries no status
            ts = now - (20 - k) * M
            readings.append(_reading(CP, 1, ts, seq, values, transaction_id="t-4", **status))
        seq += 1
        readings.append(
            _reading(CP, 2, now - 2 * M, seq, {"power_w": 3000.0, "energy_wh": 500.0},
                     transaction_id="t-new", status="Charging")
        )  # fmt: skip
        seq += 1
        readings.append(_reading(CP, 3, now - 3 * M, seq, {"power_w": 0.0}, status="Available"))
        readings.append(_reading(OTHER, 1, now - M, 1, {"power_w": 1.0}))
        # OCPP: MeterValues of t-s, then a StatusNotification (no transactionId) of the pause.
        readings.append(
            _reading(SUSPENDED, 1, now - 10 * M, 1, {"power_w": 7000.0, "energy_wh": 1300.0},
                     transaction_id="t-s")
        )  # fmt: skip
        readings.append(
            _reading(SUSPENDED, 1, now - 4 * M, 2, {"error_code": 0.0}, status="SuspendedEV")
        )
        r = httpx.post(
            f"{url}/write",
            params={"db": database, "precision": "ns"},
            content="\n".join(readings).encode(),
            timeout=30,
        )
        assert r.status_code == 204, r.text
        # t-60's minutes as the rollup job keeps them: its connector 1, and connector 2 beside.
        create_rollup_policies(url, database)
        first = old_start.replace(second=0)
        old: list[Bucket] = []
        old_lines: list[str] = []
        for k in range(182):
            for conn, base in ((1, 5000.0), (2, 10.0)):
                p = base + 7 * (k % 13) + 0.25
                b = Bucket(
                    first + k * M,
                    {"power_w": (p, p - 1, p + 1, p)},
                    count=1 + k % 5,
                    tags={"gateway_id": "gw-1", "evse_id": "1", "connector_id": str(conn)},
                )
                if conn == 1:
                    old.append(b)
                old_lines.append(b.line("readings_1m", CP))
        write_lines(url, database, old_lines, rp="rollup_1m")
        yield Seeded(url, database, now, s, curve, curve_start, old_start, old)
    finally:
        _influxql(url, f'DROP DATABASE "{database}"')


def _settings(seeded: Seeded, **extra: Any) -> ApiSettings:
    return ApiSettings(
        keys={"read": SecretStr(READ), "ingest": SecretStr(INGEST)},
        influx=InfluxSettings(url=seeded.url, database=seeded.database, timeout_s=30.0),
        **extra,
    )


@pytest.fixture
async def api(seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(seeded, sessions_max_page=500))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api.test",
            headers={"X-API-Key": READ},
            timeout=60.0,
        ) as client,
    ):
        yield client


def _ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    return resp.json()


def _problem(resp: httpx.Response, status: int, slug: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["type"].endswith(":" + slug), resp.text


def _of(seeded: Seeded, charger: str) -> list[dict[str, Any]]:
    return [s for s in seeded.sessions if s["charger_id"] == charger]


# --- a charger's sessions --------------------------------------------------------------------


async def test_a_chargers_sessions_in_a_window_newest_first_by_state(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """Default window: the last 30 days (t-old is older), newest first, the superseded point of
    t-1 left out; every key of the contract with its value; state and limit filter."""
    body = _ok(await api.get(f"/v1/chargers/{CP}/sessions"))
    assert [s["transaction_id"] for s in body["items"]] == ["t-4", "t-2", "t-3", "t-1"]
    assert body["truncated"] is False
    assert body["charger_id"] == CP
    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    assert end - start == timedelta(days=30)
    by_tx = {s["transaction_id"]: s for s in body["items"]}
    assert all(list(s) == list(COLUMNS) for s in body["items"])
    t1 = by_tx["t-1"]
    w = next(s for s in _of(seeded, CP) if s["transaction_id"] == "t-1")
    assert t1 == {
        "charger_id": CP, "gateway_id": "gw-1", "evse_id": 1, "connector_id": 1,
        "transaction_id": "t-1", "state": "ended", "started_at": format_ts(w["started_at"]),
        "ended_at": format_ts(w["ended_at"]), "end_cause": "stop", "meter_start_wh": 1000.0,
        "meter_stop_wh": 6000.0, "energy_wh": 5000.0, "max_power_w": 7400.0,
        "duration_s": 3600.0, "stop_reason": "EVDisconnected", "id_tag_hash": None,
        "readings": 10, "flags": ["seq_gap", "energy_suspect"],
    }  # fmt: skip
    active = by_tx["t-4"]
    assert (active["state"], active["ended_at"], active["end_cause"]) == ("active", None, None)
    assert by_tx["t-3"]["connector_id"] == 2

    only = _ok(await api.get(f"/v1/chargers/{CP}/sessions", params={"state": "active"}))
    assert [s["transaction_id"] for s in only["items"]] == ["t-4"]
    ended = _ok(await api.get(f"/v1/chargers/{CP}/sessions", params={"state": "ended"}))
    assert [s["transaction_id"] for s in ended["items"]] == ["t-2", "t-3", "t-1"]
    year = _ok(await api.get(f"/v1/chargers/{CP}/sessions", params={"start": "-365d"}))
    assert [s["transaction_id"] for s in year["items"]][-2:] == ["t-old", "t-60"]
    narrow = _ok(
        await api.get(f"/v1/chargers/{CP}/sessions", params={"start": "-4d", "end": "-1d"})
    )
    assert [s["transaction_id"] for s in narrow["items"]] == ["t-2", "t-3"]
    two = _ok(await api.get(f"/v1/chargers/{CP}/sessions", params={"limit": 2}))
    assert [s["transaction_id"] for s in two["items"]] == ["t-4", "t-2"]
    assert two["truncated"] is True
    assert _ok(await api.get("/v1/chargers/gw-9-none/sessions"))["items"] == []

    _problem(await api.get(f"/v1/chargers/{CP}/sessions", params={"start": "-401d"}), 422,
             "invalid-time")  # fmt: skip
    _problem(await api.get(f"/v1/chargers/{CP}/sessions", params={"limit": 501}), 422,
             "limit-too-large")  # fmt: skip
    _problem(await api.get(f"/v1/chargers/{CP}/sessions", params={"state": "superseded"}), 422,
             "invalid-request")  # fmt: skip


# --- the fleet export ------------------------------------------------------------------------


async def _export(api: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = _ok(
            await api.get(
                "/v1/sessions", params={**params, **({"cursor": cursor} if cursor else {})}
            )
        )
        assert len(page["items"]) <= params.get("limit", 1000)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging does not end")


def _keys(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s["charger_id"], s["transaction_id"]) for s in items]


async def test_the_fleet_export_pages_through_many_sessions_that_share_one_start(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """Pages of 7 and of 100 follow the cursor through the window, oldest first: every session
    exactly once, the 300 that start at the same millisecond included (pages of 7 go past the
    256 a cursor carries digests of); state and gateway_id filter."""
    want = [s for s in seeded.sessions if s["started_at"] >= seeded.now - timedelta(days=30)]
    for limit in (7, 100):
        items = await _export(api, {"limit": limit})
        assert len(_keys(items)) == len(set(_keys(items))), "a session came twice"
        assert sorted(_keys(items)) == sorted(_keys(want))
        starts = [s["started_at"] for s in items]
        assert starts == sorted(starts)
    for limit in (7, 100):
        ties = await _export(api, {"gateway_id": TIES, "limit": limit})
        assert len(ties) == N_TIES
        assert len(set(_keys(ties))) == N_TIES
        assert {s["started_at"] for s in ties} == {ties[0]["started_at"]}
    active = await _export(api, {"state": "active", "limit": 7})
    assert _keys(active) == [(SUSPENDED, "t-s"), (CP, "t-4")]
    gw2 = await _export(api, {"gateway_id": "gw-2", "start": "-7d", "limit": 5})
    assert _keys(gw2) == [(f"gw-2-cp{i:03d}", f"g{i}") for i in range(12)]


async def test_a_forged_altered_or_foreign_cursor_is_refused(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """422 invalid-cursor for a cursor not signed by the API, altered, of other filters, or of
    another endpoint."""
    page = _ok(await api.get("/v1/sessions", params={"limit": 3}))
    good = page["next_cursor"]
    assert good
    body, _, tag = good.partition(".")
    altered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + tag
    history = _ok(await api.get(f"/v1/chargers/{CP}/history", params={"start": "-1h", "limit": 1}))[
        "next_cursor"
    ]
    for bad, params in (
        ("not-a-cursor", {}),
        (altered, {}),
        (good, {"state": "ended"}),
        (good, {"gateway_id": "gw-2"}),
        (history, {}),
    ):
        resp = await api.get("/v1/sessions", params={"limit": 3, "cursor": bad, **params})
        _problem(resp, 422, "invalid-cursor")
    assert _ok(await api.get("/v1/sessions", params={"limit": 3, "cursor": good}))["items"]


async def test_the_csv_export_holds_every_session_and_no_formula(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """format=csv (or Accept: text/csv): a header of the session's keys and one row per
    session of the whole window, whatever ``limit`` is; flags joined by ``;``; text that starts
    like a formula prefixed with ``'``; null as an empty cell."""
    resp = await api.get("/v1/sessions", params={"format": "csv", "start": "-30d", "limit": 13})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == list(COLUMNS)
    want = [s for s in seeded.sessions if s["started_at"] >= seeded.now - timedelta(days=30)]
    assert len(rows) - 1 == len(want)
    by_tx = {r[4]: dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]}
    evil = by_tx["'=1+2"]
    assert (evil["charger_id"], evil["stop_reason"]) == ("'-evil", "'@SUM(A1)")
    t1 = by_tx["t-1"]
    assert t1["flags"] == "seq_gap;energy_suspect"
    assert (t1["energy_wh"], t1["readings"], t1["id_tag_hash"]) == ("5000.0", "10", "")
    assert by_tx["t-4"]["ended_at"] == ""
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r)
    accepted = await api.get(
        "/v1/sessions", params={"start": "-30d"}, headers={"Accept": "text/csv"}
    )
    assert accepted.headers["content-type"].startswith("text/csv")
    assert accepted.text == resp.text
    as_json = await api.get("/v1/sessions", params={"format": "json", "limit": 1})
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.headers["vary"] == accepted.headers["vary"] == "Accept"


class CountingInflux:
    """The real InfluxQL client, counting the session queries sent and the streamed documents
    received (to see when each answer part left)."""

    def __init__(self, client: InfluxQLClient) -> None:
        self.client = client
        self.sessions_queries = 0
        self.documents = 0

    async def query(self, q: str) -> list[Series]:
        if '"sessions"' in q:
            self.sessions_queries += 1
        return await self.client.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.client.query_chunked(q)

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        if '"sessions"' in q:
            self.sessions_queries += 1
        async for chunk in self.client.query_stream(q, chunk_size=chunk_size):
            self.documents += 1
            yield chunk


async def test_the_csv_export_streams_as_influxdb_answers(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV answer is one query for the whole window, streamed: each document InfluxDB sends
    (here 10 sessions) leaves as a part of its own before the next is read, so the API holds
    one document at a time whatever the window holds."""
    monkeypatch.setattr(sessions_read, "CSV_CHUNK", 10)
    settings = _settings(seeded)
    async with InfluxQLClient(settings.influx) as client:
        counting = CountingInflux(client)
        app = create_app(settings, influx=counting, writer=None)
        parts: list[tuple[int, bytes]] = []
        status: list[int] = []

        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and message.get("body"):
                parts.append((counting.documents, message["body"]))

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/v1/sessions", "raw_path": b"/v1/sessions",
            "query_string": b"format=csv&start=-30d&limit=10", "root_path": "",
            "headers": [(b"host", b"api.test"), (b"x-api-key", READ.encode())],
            "client": ("127.0.0.1", 1), "server": ("api.test", 80),
        }  # fmt: skip
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
    assert status == [200]
    want = len([s for s in seeded.sessions if s["started_at"] >= seeded.now - timedelta(days=30)])
    pages = math.ceil(want / 10)
    assert counting.sessions_queries == 1
    assert len(parts) >= pages
    assert [n for n, _ in parts[:pages]] == list(range(1, pages + 1))
    text = b"".join(body for _, body in parts).decode()
    assert len(text.splitlines()) == want + 1


# --- one session and its power curve ---------------------------------------------------------


async def test_a_session_with_its_power_curve_of_its_own_connector(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """t-2 ran 19 minutes on connector 1 (readings every 20 s) while connector 2 drew other
    power: the curve is mean(power_w) of connector 1's readings only, in at most ``points``
    buckets of whole seconds, from the raw readings (within their retention)."""
    body = _ok(await api.get("/v1/sessions/t-2", params={"charger_id": CP, "points": 200}))
    assert (body["transaction_id"], body["energy_wh"], body["id_tag_hash"]) == (
        "t-2",
        1234.5,
        "ab" * 16,
    )
    assert body["resolution"] == "raw"
    assert body["every"] == "6s"  # 19 min + 1 ms in at most 200 buckets
    own = seeded.curve[1][: 19 * 3 + 1]  # the readings up to ended_at (inclusive)
    assert [p["power_w"] for p in body["power"]] == own
    coarse = _ok(await api.get("/v1/sessions/t-2", params={"charger_id": CP, "points": 4}))
    stamps = [datetime.fromisoformat(p["ts"]) for p in coarse["power"]]
    assert 3 <= len(stamps) <= 4
    step = stamps[1] - stamps[0]
    assert all(b - a == step for a, b in itertools.pairwise(stamps))
    assert all((t - datetime(1970, 1, 1, tzinfo=UTC)) % step == timedelta(0) for t in stamps)
    assert stamps[0] <= seeded.curve_start < stamps[0] + step
    assert stamps[-1] + step > seeded.curve_start + 19 * M
    start = seeded.curve_start
    times = [start + (i // 3) * M + timedelta(seconds=20 * (i % 3)) for i in range(len(own))]
    want = [
        sum(p for p, t in zip(own, times, strict=True) if lo <= t < lo + step)
        / sum(1 for t in times if lo <= t < lo + step)
        for lo in stamps
    ]
    assert [p["power_w"] for p in coarse["power"]] == pytest.approx(want)
    # 60 days ago: from the 1-minute rollups of its connector, weighted by their counts.
    old = _ok(await api.get("/v1/sessions/t-60", params={"charger_id": CP, "points": 200}))
    assert (old["resolution"], old["every"]) == ("1m", "1m")
    inside = [b for b in seeded.old_buckets if b.ts < seeded.old_start + 180 * M]
    assert [p["ts"] for p in old["power"]] == [format_ts(b.ts) for b in inside]
    assert [p["power_w"] for p in old["power"]] == [b.values["power_w"][0] for b in inside]
    tens = _ok(await api.get("/v1/sessions/t-60", params={"charger_id": CP, "points": 20}))
    assert tens["resolution"] == "1m"
    assert len(tens["power"]) <= 20
    step = datetime.fromisoformat(tens["power"][1]["ts"]) - datetime.fromisoformat(
        tens["power"][0]["ts"]
    )
    assert step % M == timedelta(0)
    for p in tens["power"]:
        lo = datetime.fromisoformat(p["ts"])
        mine = [b for b in inside if lo <= b.ts < lo + step]
        weighted = sum(b.values["power_w"][0] * b.count for b in mine) / sum(b.count for b in mine)
        assert p["power_w"] == pytest.approx(weighted)
    assert sum(1 for b in inside if datetime.fromisoformat(tens["power"][0]["ts"]) <= b.ts) == len(
        inside
    )

    active = _ok(await api.get("/v1/sessions/t-4", params={"charger_id": CP}))
    assert [p["power_w"] for p in active["power"]] == [11_000.0 + k for k in range(5)]

    _problem(await api.get("/v1/sessions/t-2", params={"charger_id": OTHER}), 404, "not-found")
    _problem(await api.get("/v1/sessions/nope", params={"charger_id": CP}), 404, "not-found")
    _problem(await api.get("/v1/sessions/t-2"), 422, "invalid-request")
    _problem(await api.get("/v1/sessions/t-2", params={"charger_id": CP, "points": 2001}), 422,
             "invalid-request")  # fmt: skip


# --- chargers: identity and connectors -------------------------------------------------------


async def test_the_charger_list_carries_each_chargers_identity(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """vendor/model/serial/firmware of the newest registry point (null where it gave none), null
    for a charger that never said."""
    body = _ok(await api.get("/v1/chargers"))
    items = {c["charger_id"]: c for c in body["items"]}
    assert {k: items[CP][k] for k in ("vendor", "model", "serial", "firmware")} == {
        "vendor": "ACME", "model": "Wallbox 22", "serial": None, "firmware": "1.4.2",
    }  # fmt: skip
    assert {k: items[OTHER][k] for k in ("vendor", "model", "serial", "firmware")} == dict.fromkeys(
        ("vendor", "model", "serial", "firmware")
    )
    paged = _ok(await api.get("/v1/chargers", params={"limit": 1}))
    assert [c["charger_id"] for c in paged["items"]] == [CP]
    assert paged["items"][0]["vendor"] == "ACME"


async def test_a_chargers_connectors_and_active_session(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """Per connector its newest reading and status; connector 1's active session t-4 with its
    energy so far (newest energy_wh - meter_start_wh) and its duration; connector 2's
    transaction the job has not computed yet; connector 3 idle. A charger known only from the
    registry answers with no connectors; one nobody knows is 404."""
    body = _ok(await api.get(f"/v1/chargers/{CP}"))
    now = seeded.now
    assert (body["charger_id"], body["gateway_id"], body["vendor"], body["serial"]) == (
        CP, "gw-1", "ACME", None,
    )  # fmt: skip
    assert body["last_seen"] == format_ts(now - 2 * M)  # connector 2's reading is the newest
    conns = {(c["evse_id"], c["connector_id"]): c for c in body["connectors"]}
    assert sorted(conns) == [(1, 1), (1, 2), (1, 3)]
    c1 = conns[1, 1]
    assert c1["status"] == "Charging"
    assert c1["status_at"] == format_ts(now - 17 * M)  # the newest reading carried no status
    assert c1["last_seen"] == format_ts(now - 16 * M)
    assert (c1["power_w"], c1["energy_wh"]) == (11_004.0, 20_800.0)
    session1 = c1["session"]
    assert session1["transaction_id"] == "t-4"
    assert session1["started_at"] == format_ts(now - 30 * M)
    assert session1["meter_start_wh"] == 20_000.0
    assert session1["energy_wh"] == 800.0
    assert 30 * 60 <= session1["duration_s"] < 30 * 60 + 120
    assert conns[1, 2]["session"] == {
        "transaction_id": "t-new", "started_at": None, "duration_s": None, "energy_wh": None,
        "meter_start_wh": None,
    }  # fmt: skip
    assert (conns[1, 3]["status"], conns[1, 3]["session"]) == ("Available", None)

    booted = _ok(await api.get(f"/v1/chargers/{BOOTED}"))
    assert (booted["vendor"], booted["gateway_id"], booted["last_seen"]) == ("Volt", "gw-2", None)
    assert booted["connectors"] == []
    _problem(await api.get("/v1/chargers/gw-9-nobody"), 404, "not-found")
    # The routes under a charger are still theirs.
    assert _ok(await api.get(f"/v1/chargers/{CP}/latest"))["charger_id"] == CP


async def test_a_connector_paused_inside_its_transaction_keeps_its_active_session(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """OCPP's StatusNotification carries no transactionId: a connector whose newest reading is
    a SuspendedEV status still shows its active session (the sessions job's ``next`` rule),
    with the stored energy so far (the newest reading has no register)."""
    body = _ok(await api.get(f"/v1/chargers/{SUSPENDED}"))
    (c,) = body["connectors"]
    assert c["status"] == "SuspendedEV"
    assert c["session"] is not None
    assert (c["session"]["transaction_id"], c["session"]["energy_wh"]) == ("t-s", 300.0)
    assert c["session"]["started_at"] == format_ts(seeded.now - 40 * M)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions",
        "/v1/sessions?format=csv",
        f"/v1/sessions/t-2?charger_id={CP}",
        f"/v1/chargers/{CP}/sessions",
        f"/v1/chargers/{CP}",
    ],
)
async def test_the_session_endpoints_need_a_read_key(
    api: httpx.AsyncClient, seeded: Seeded, path: str
) -> None:
    """No key 401, an ingest key 403, the read key 200."""
    _problem(await api.get(path, headers={"X-API-Key": ""}), 401, "unauthenticated")
    _problem(await api.get(path, headers={"X-API-Key": "wrong-key-000"}), 401, "unauthenticated")
    _problem(await api.get(path, headers={"X-API-Key": INGEST}), 403, "forbidden")
    assert (await api.get(path)).status_code == 200


@pytest.mark.parametrize("cache_s", [60.0, 0.0])
async def test_a_chargers_sessions_are_reused_for_sessions_cache_s(
    seeded: Seeded, cache_s: float
) -> None:
    """The same question within SESSIONS_CACHE_S gets the same answer without InfluxDB (a
    session written meanwhile shows after the cache's time); 0 turns the cache off."""
    charger = f"cp-cache-{uuid.uuid4().hex[:6]}"
    first = session(charger, "c-1", seeded.now - timedelta(hours=2))
    write_keep(seeded.url, seeded.database, [session_line(first)])
    app = create_app(_settings(seeded, sessions_cache_s=cache_s))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test",
            headers={"X-API-Key": READ},
        ) as client,
    ):  # fmt: skip
        path = f"/v1/chargers/{charger}/sessions"
        before = _ok(await client.get(path, params={"start": "-1d"}))
        assert [s["transaction_id"] for s in before["items"]] == ["c-1"]
        second = session(charger, "c-2", seeded.now - timedelta(hours=1))
        write_keep(seeded.url, seeded.database, [session_line(second)])
        after = _ok(await client.get(path, params={"start": "-1d"}))
        other = _ok(await client.get(path, params={"start": "-2d"}))  # another question
    assert [s["transaction_id"] for s in other["items"]] == ["c-2", "c-1"]
    if cache_s:
        assert after == before
    else:
        assert [s["transaction_id"] for s in after["items"]] == ["c-2", "c-1"]
