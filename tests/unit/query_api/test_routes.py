"""The new endpoints as an app (create_app + a fake InfluxQL client + a fake broker): charger
list, latest from the mirror, history cursors, stats, fleet daily, ingest, readiness, metrics,
OpenAPI. InfluxDB and Mosquitto themselves are exercised in tests/integration/test_api_*.py.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from query_api import cursor
from query_api.acks import StoredAcks
from query_api.app import create_app
from query_api.problems import MEDIA_TYPE
from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxUnavailable, Series
from telemetry_common.mqtt import NoSubscribersError, NotConnectedError, PublishLostError
from telemetry_common.settings import MqttSettings
from tests.support.fake_influx import FakeInflux, FixedClock

READ, INGEST, ADMIN, SITE = (
    "read-key-0123456789",
    "ingest-key-012345",
    "admin-key-0123456",
    "s" * 20,
)
NOW = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
NS = 1_777_636_800_000_000_000  # 2026-05-01T12:00:00Z
MONO = 1000.0


class FakeBroker:
    """Takes publishes; as a bridge would, acknowledges each batch as stored (``acks``, set by
    the app fixture) soon after, unless ``store`` is off."""

    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[str, bytes]] = []
        self.fail: Exception | None = None
        self.store = True
        self.acks: StoredAcks | None = None

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, payload))
        body = orjson.loads(payload)
        seqs = [r["seq"] for r in body["readings"]]
        if self.store and self.acks is not None:
            ack = orjson.dumps({"epoch": body["epoch"], "seqs": [[min(seqs), max(seqs)]]})
            stored = topic.removesuffix("/readings") + "/stored"
            asyncio.get_running_loop().call_later(0.01, self.acks.apply, stored, ack)


@pytest.fixture
def fake() -> FakeInflux:
    return FakeInflux()


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
async def app(fake: FakeInflux, broker: FakeBroker) -> AsyncIterator[FastAPI]:
    settings = ApiSettings(
        keys={"read": SecretStr(READ), "ingest": SecretStr(INGEST), "admin": SecretStr(ADMIN)},
        ingest_keys={"site-a": SecretStr(SITE)},
        mqtt=MqttSettings(),
        history_max_points=500,
        latest_sweep_s=0,  # sweeps have tests of their own (test_api_parts.py)
        ingest_stored_timeout_s=0.3,
    )
    app = create_app(settings, influx=fake, broker=broker, clock=FixedClock(NOW, MONO))
    broker.acks = app.state.acks
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api.test", headers={"X-API-Key": READ}
    ) as c:
        yield c


def _live(charger: str, gw: str, sec: int, seq: int) -> bytes:
    return orjson.dumps(
        {
            "charger_id": charger,
            "gateway_id": gw,
            "seq": seq,
            "ts": f"2026-05-01T12:00:{sec:02d}Z",
            "values": {"power_w": 1.0},
        }
    )


def _problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == MEDIA_TYPE
    body: dict[str, Any] = resp.json()
    return body


# --- latest and the charger list ------------------------------------------------------------


async def test_latest_from_the_mirror_carries_state_and_skips_influx(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """A settled, checked mirror value is served without a query; the gateway's will makes the
    charger offline."""
    app.state.mirror.apply("chargers/v1/live/cp1", _live("cp1", "gw-1", 0, 7), MONO - 10)
    app.state.mirror.get("cp1").checked = MONO - 1
    body = (await client.get("/v1/chargers/cp1/latest")).json()
    assert (body["source"], body["seq"], body["age_s"], body["state"]) == (
        "mirror",
        7,
        10.0,
        "online",
    )
    assert fake.queries == []
    app.state.mirror.apply("chargers/v1/gw-1/state", b'{"state": "offline"}', MONO)
    assert (await client.get("/v1/chargers/cp1/latest")).json()["state"] == "offline"
    compat = (await client.get("/telemetry/cp1")).json()
    assert compat == {"chargerId": "cp1", "timestamp": "2026-05-01T12:00:00.000Z",
                      "payload": {"power_w": 1.0}}  # fmt: skip


async def test_charger_list_pages_and_filters(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """Chargers from InfluxDB and the mirror, sorted by id, paged by cursor, filtered by gateway
    and state; the index query runs once within the cache time."""
    old = NS - 7200 * 10**9  # beyond the recent window: known from the newest-stored state
    columns = ["time", "bridge", "charger_id", "gateway_id", "seq", "ts"]
    rows = [[0, "b1", c, g, 1, old] for c, g in (("cp1", "gw-1"), ("cp2", "gw-2"), ("cp3", "gw-1"))]
    fake.answers.append([Series("newest_chargers", columns, rows)])
    app.state.mirror.apply("chargers/v1/live/cp3", _live("cp3", "gw-1", 5, 2), MONO)
    app.state.mirror.apply("chargers/v1/live/cp4", _live("cp4", "gw-1", 5, 2), MONO)
    first = (await client.get("/v1/chargers", params={"limit": 2})).json()
    assert [c["charger_id"] for c in first["items"]] == ["cp1", "cp2"]
    assert first["items"][0]["state"] == "offline"
    rest = (
        await client.get("/v1/chargers", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [(c["charger_id"], c["state"]) for c in rest["items"]] == [
        ("cp3", "online"),
        ("cp4", "online"),
    ]
    assert rest["next_cursor"] is None
    gw1 = (await client.get("/v1/chargers", params={"gateway": "gw-1", "state": "online"})).json()
    assert [c["charger_id"] for c in gw1["items"]] == ["cp3", "cp4"]
    index = [q for q in fake.queries if '"readings"' in q]
    assert len(index) == 1
    # The identity of each page's chargers: one registry query per page, naming them.
    registry = [q for q in fake.queries if '"keep"."chargers"' in q]
    assert len(registry) == 3
    assert "'cp1'" in registry[0]
    assert "'cp2'" in registry[0]
    assert "'cp3'" not in registry[0]
    bad = await client.get(
        "/v1/chargers", params={"gateway": "gw-1", "cursor": first["next_cursor"]}
    )
    _problem(bad, 422)


# --- history cursor, stats, fleet -----------------------------------------------------------

RAW = ["time", "connector_id", "evse_id", "gateway_id", "power_w", "seq", "status"]


async def test_history_cursor_skips_series_already_returned_at_the_boundary(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """The next page starts at the last time of the page and leaves out the series already
    returned at that time; its window is pinned to the first request's end."""
    rows = [[NS, "1", "1", "gw", 1.0, 1, None], [NS + 10**9, "1", "1", "gw", 2.0, 2, None]]
    fake.answers.append([Series("readings", RAW, rows)])
    params: dict[str, str | int] = {"start": "2026-05-01T11:00:00Z", "end": "now", "limit": 2}
    page = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert page["truncated"] is True
    same_time = [
        [NS + 10**9, "1", "1", "gw", 2.0, 2, None],
        [NS + 10**9, "1", "2", "gw", 3.0, 3, None],
    ]
    fake.answers.append([Series("readings", RAW, same_time)])
    nxt = (
        await client.get(
            "/v1/chargers/cp1/history", params={**params, "cursor": page["next_cursor"]}
        )
    ).json()
    assert [p["seq"] for p in nxt["points"]] == [3]
    assert "next_cursor" not in nxt
    assert (
        "time >= '2026-05-01T12:00:01.000000Z' AND time < '2026-05-01T12:00:10.000000Z'"
        in fake.queries[1]
    )
    assert fake.queries[1].endswith("LIMIT 3")  # limit + the one series to skip
    assert nxt["start"] == "2026-05-01T11:00:00.000Z"


def _forged(body: dict[str, Any]) -> str:
    """A cursor as the API wrote them before they were signed: base64url JSON."""
    return base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()


TEN_YEARS_NS = 3653 * 86_400 * 10**9


async def test_forged_history_cursor_with_a_ten_year_window_is_refused(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """A cursor the client wrote itself (unsigned, or signed with another key) is 422
    invalid-cursor; even one carrying our signature (a leaked key) may not span more than
    HISTORY_MAX_RANGE. Nothing is asked of InfluxDB."""
    q = cursor.fingerprint("history", "cp1", None, None, None, None)
    span = {"o": NS - TEN_YEARS_NS, "t": NS - TEN_YEARS_NS, "e": NS}
    unsigned = _forged({"k": "history", "q": q, **span})
    other_key = cursor.Cursors(b"x" * 32).encode("history", q, span)
    signed = app.state.cursors.encode("history", q, span)
    # A cursor resumed near the end whose original start lies ten years back, and one whose
    # end moved ten years past what the original start allowed.
    late = app.state.cursors.encode("history", q, {**span, "t": NS - 10**9})
    moved = app.state.cursors.encode("history", q, {"o": NS, "t": NS, "e": NS + TEN_YEARS_NS})
    for text in (unsigned, other_key, signed, late, moved):
        resp = await client.get("/v1/chargers/cp1/history", params={"cursor": text})
        assert _problem(resp, 422)["type"].endswith(":invalid-cursor")
    assert fake.queries == []
    # Within the cap, a signed cursor is accepted.
    fine = app.state.cursors.encode("history", q, {"o": NS, "t": NS, "e": NS + 3600 * 10**9})
    fake.answers.append([Series("readings", RAW, [])])
    assert (
        await client.get("/v1/chargers/cp1/history", params={"cursor": fine})
    ).status_code == 200


async def test_genuine_history_cursors_page_a_downsampled_window_to_its_end(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """next_cursor of a 29-day downsampled query of raw readings (rounded out to whole buckets)
    is accepted, and the pages follow each other to the end, from the same store."""
    params: dict[str, str | int] = {
        "start": "-29d",
        "every": "1d",
        "limit": 16,
        "resolution": "raw",
    }
    day = 86_400 * 10**9
    first = NS - 29 * day - (NS - 29 * day) % day
    fake.answers.append(
        [Series("readings", BUCKETS, [[first + i * day, float(i)] for i in range(16)])]
    )
    page = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert page["truncated"] is True
    fake.answers.append(
        [Series("readings", BUCKETS, [[first + i * day, float(i)] for i in range(16, 30)])]
    )
    nxt = (
        await client.get(
            "/v1/chargers/cp1/history", params={**params, "cursor": page["next_cursor"]}
        )
    ).json()
    assert [p["values"]["power_w"] for p in nxt["points"]] == [float(i) for i in range(16, 30)]
    assert nxt["resolution"] == page["resolution"] == "raw"
    assert all('FROM "readings"' in q for q in fake.queries)
    assert nxt["start"] == page["start"]
    assert nxt["end"] == page["end"]
    assert "next_cursor" not in nxt


async def test_charger_list_cursor_is_signed(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """A hand-written charger-list cursor (unsigned) is refused."""
    q = cursor.fingerprint("chargers", None, None)
    resp = await client.get(
        "/v1/chargers", params={"cursor": _forged({"k": "chargers", "q": q, "a": ""})}
    )
    assert _problem(resp, 422)["type"].endswith(":invalid-cursor")


async def test_cursor_secret_makes_cursors_valid_across_processes(fake: FakeInflux) -> None:
    """Two API processes with one CURSOR_SECRET accept each other's cursors; without it each
    process signs with a key of its own."""

    def app_with(secret: str | None) -> FastAPI:
        settings = ApiSettings(
            keys={"read": SecretStr(READ)},
            cursor_secret=SecretStr(secret) if secret is not None else None,
        )
        return create_app(settings, influx=fake, clock=FixedClock(NOW, MONO))

    q = cursor.fingerprint("chargers", None, None)
    one, two = app_with("s" * 32), app_with("s" * 32)
    assert two.state.cursors.decode(
        one.state.cursors.encode("chargers", q, {"a": "x"}), "chargers", q
    )
    three, four = app_with(None), app_with(None)
    with pytest.raises(cursor.CursorError):
        four.state.cursors.decode(
            three.state.cursors.encode("chargers", q, {"a": "x"}), "chargers", q
        )


BUCKETS = ["time", "mean_power_w"]


async def test_downsampled_history_with_a_relative_window_is_aligned_and_cached(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """every=5m with start=-1h: the window is rounded out to whole 5-minute buckets, and the
    same question within HISTORY_CACHE_S is answered from the cache (one InfluxDB query); after
    that the old page is served once more while the new one is built."""
    fake.answers.append([Series("readings", BUCKETS, [[NS, 1.5]])])
    fake.answers.append([Series("readings", BUCKETS, [[NS, 2.5]])])
    params = {"start": "-1h", "every": "5m"}
    first = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    again = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert first == again
    assert len(fake.queries) == 1
    # NOW is 12:00:10: the hour before it, rounded out to the 5-minute grid.
    assert (first["start"], first["end"]) == (
        "2026-05-01T11:00:00.000Z",
        "2026-05-01T12:05:00.000Z",
    )
    assert (
        "time >= '2026-05-01T11:00:00.000000Z' AND time < '2026-05-01T12:05:00.000000Z'"
        in (fake.queries[0])
    )
    assert first["points"] == [{"ts": "2026-05-01T12:00:00.000Z", "values": {"power_w": 1.5}}]
    app.state.clock.monotonic = MONO + 5.0  # HISTORY_CACHE_S (5 s) later
    stale = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert stale["points"][0]["values"] == {"power_w": 1.5}  # served while it is rebuilt
    await asyncio.sleep(0.01)  # the rebuild runs in the background
    later = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert len(fake.queries) == 2
    assert later["points"][0]["values"] == {"power_w": 2.5}


async def test_absolute_and_raw_history_windows_are_not_moved(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """An absolute start/end is kept to the microsecond even with every; raw history (no
    every) is never cached: each request asks InfluxDB."""
    params = {"start": "2026-05-01T11:01:30Z", "end": "2026-05-01T11:58:00Z", "every": "5m"}
    page = (await client.get("/v1/chargers/cp1/history", params=params)).json()
    assert (page["start"], page["end"]) == ("2026-05-01T11:01:30.000Z", "2026-05-01T11:58:00.000Z")
    for _ in range(2):
        await client.get("/v1/chargers/cp1/history", params={"start": "-1h"})
    assert len(fake.queries) == 3


async def test_stats_query_and_answer(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """Named fields become one aggregate query; the answer is per field."""
    cols = ["time"] + [f"{s}_power_w" for s in ("count", "mean", "median", "stddev", "min", "max")]
    fake.answers.append([Series("readings", cols, [[0, 4, 2.5, 2.5, 1.29, 1.0, 4.0]])])
    body = (await client.get("/v1/chargers/cp1/stats", params={"fields": "power_w"})).json()
    assert body["fields"]["power_w"] == {"count": 4, "mean": 2.5, "median": 2.5, "stddev": 1.29,
                                         "min": 1.0, "max": 4.0}  # fmt: skip
    assert 'median("power_w") AS "median_power_w"' in fake.queries[0]
    assert "time >= '2026-04-30T12:00:10.000000Z'" in fake.queries[0]  # default: last 24 h
    _problem(await client.get("/v1/chargers/cp1/stats", params={"start": "-1826d"}), 422)


async def test_fleet_daily_json_and_html(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """One count query in total and one per status; JSON by default, HTML for browsers."""

    def count(n: int) -> list[Series]:
        return [Series("readings", ["time", "count"], [[0, n]])]

    fake.answers += [count(10), count(1), count(0), count(6), *[[] for _ in range(7)]]
    body = (await client.get("/v1/fleet/daily", params={"date": "2026-04-30"})).json()
    assert body == {"date": "2026-04-30", "total": 10, "by_status": {"Available": 1, "Charging": 6},
                    "no_status": 3}  # fmt: skip
    assert len(fake.queries) == 11
    assert all(
        "time >= '2026-04-30T00:00:00.000000Z' AND time < '2026-05-01T00" in q for q in fake.queries
    )
    page = await client.get("/v1/fleet/daily", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "2026-05-01" in page.text  # default: today (UTC)
    _problem(await client.get("/v1/fleet/daily", params={"date": "2026-13-01"}), 422)


# --- ingest ---------------------------------------------------------------------------------

READING = {"charger_id": "cp1", "ts": "2026-05-01T12:00:00Z", "values": {"power_w": 1.0}}


async def _post(client: httpx.AsyncClient, body: object, key: str = INGEST) -> httpx.Response:
    return await client.post("/v1/telemetry", json=body, headers={"X-API-Key": key})


async def test_ingest_publishes_numbered_batches_under_the_key_gateway(
    client: httpx.AsyncClient, fake: FakeInflux, broker: FakeBroker
) -> None:
    """200 once stored; seqs continue from InfluxDB's highest for that gateway; each key
    publishes as its own gateway."""
    # the newest-stored state knows nothing of it, the recent window does
    fake.answers += [[], [Series("readings", ["time", "seq"], [[0, 41]])]]
    resp = await _post(client, [READING, READING])
    assert resp.status_code == 200, resp.text
    assert (resp.json()["first_seq"], resp.json()["last_seq"]) == (42, 43)
    topic, payload = broker.published[0]
    assert topic == "chargers/v1/http-ingest/readings"
    batch = orjson.loads(payload)
    assert batch["gateway_id"] == "http-ingest"
    assert [r["seq"] for r in batch["readings"]] == [42, 43]
    assert "\"gateway_id\" = 'http-ingest'" in fake.queries[0]
    site = await _post(client, READING, SITE)
    assert site.json()["gateway_id"] == "site-a"
    assert broker.published[1][0] == "chargers/v1/site-a/readings"
    assert (await _post(client, READING)).json()["first_seq"] == 44


async def test_ingest_answers_only_once_every_seq_is_acknowledged(
    app: FastAPI, client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    """The answer waits for acknowledgements covering every seq (several bridges each send
    their share); an acknowledgement of an epoch or of another gateway does not count."""
    broker.store = False
    acks: StoredAcks = app.state.acks
    topic = "chargers/v1/http-ingest/stored"
    task = asyncio.create_task(_post(client, [READING] * 5))
    for _ in range(100):
        if broker.published:
            break
        await asyncio.sleep(0.005)

    def ack(seqs: str, epoch: str | None = acks.epoch) -> bytes:
        return b'{"epoch": %s, "seqs": %s}' % (orjson.dumps(epoch), seqs.encode())

    assert orjson.loads(broker.published[0][1])["epoch"] == acks.epoch
    assert acks.apply(topic, ack("[[1, 2], [5, 9]]"))
    assert not acks.apply(topic, ack("[[3, 4]]", "0123456789abcdef"))  # another process's
    assert not acks.apply(topic, ack("[[3, 4]]", None))  # an edge outbox's lifelong numbering
    assert acks.apply("chargers/v1/site-a/stored", ack("[[3, 4]]"))
    assert not acks.apply("chargers/v1/gw-1/stored", ack("[[3, 4]]"))
    assert not acks.apply(topic, ack("[[4, 3]]"))
    await asyncio.sleep(0.05)
    assert not task.done()
    assert acks.apply(topic, ack("[[3, 3], [4, 4]]"))
    resp = await asyncio.wait_for(task, 2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["last_seq"] == 5


async def test_ingest_not_acknowledged_in_time_is_503_with_retry_after(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    """Published but never acknowledged (no bridge stores it): 503 not-stored with Retry-After
    after INGEST_STORED_TIMEOUT_S; the seqs stay used (the readings may still be stored)."""
    broker.store = False
    resp = await _post(client, READING)
    body = _problem(resp, 503)
    assert body["type"].endswith(":not-stored")
    assert resp.headers["retry-after"] == "2"
    assert len(broker.published) == 1
    broker.store = True
    assert (await _post(client, READING)).json()["first_seq"] == 2


@pytest.mark.parametrize(
    ("failure", "next_seq"),
    [(NotConnectedError("api"), 1), (NoSubscribersError("t"), 1), (PublishLostError("t"), 2)],
)
async def test_ingest_failures_are_503_and_release_seqs_not_sent(
    client: httpx.AsyncClient, broker: FakeBroker, failure: Exception, next_seq: int
) -> None:
    """A publish that certainly failed (not connected, or no subscriber: PUBACK 0x10) gives its
    seqs back; a lost one (maybe stored) keeps them used; all are 503 with Retry-After."""
    broker.fail = failure
    resp = await _post(client, READING)
    assert _problem(resp, 503)["type"].endswith(":broker-unavailable")
    assert resp.headers["retry-after"] == "2"
    broker.fail = None
    assert (await _post(client, READING)).json()["first_seq"] == next_seq


async def _keyed(
    client: httpx.AsyncClient, body: object, key: str, api_key: str = INGEST
) -> httpx.Response:
    return await client.post(
        "/v1/telemetry", json=body, headers={"X-API-Key": api_key, "Idempotency-Key": key}
    )


async def test_idempotency_key_reuses_the_seqs_of_a_failed_attempt(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    """A request that timed out, retried with its key, publishes the same seqs again; once
    answered 200 the key gives the same answer without publishing; a request in between without
    a key takes the next seqs."""
    broker.store = False
    assert (await _keyed(client, [READING] * 3, "key-00000001")).status_code == 503
    broker.store = True
    other = await _post(client, READING)
    assert other.json()["first_seq"] == 4
    retry = await _keyed(client, [READING] * 3, '"key-00000001"')  # sf-string quotes are fine
    assert retry.status_code == 200, retry.text
    assert (retry.json()["first_seq"], retry.json()["last_seq"]) == (1, 3)
    assert "idempotent-replayed" not in retry.headers
    sent = [[r["seq"] for r in orjson.loads(p)["readings"]] for _, p in broker.published]
    assert sent == [[1, 2, 3], [4], [1, 2, 3]]
    again = await _keyed(client, [READING] * 3, "key-00000001")
    assert again.json() == retry.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert len(broker.published) == 3
    # the same key under another ingest key (another gateway) is another key
    site = await _keyed(client, [READING] * 3, "key-00000001", SITE)
    assert (site.json()["gateway_id"], site.json()["first_seq"]) == ("site-a", 1)


async def test_idempotency_key_with_other_readings_invalid_or_in_use(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    """Another body under a used key: 422; a malformed key: 422 before anything is published;
    a second request while the first with the key still waits: 409 with Retry-After."""
    assert (await _keyed(client, READING, "key-00000002")).status_code == 200
    other = dict(READING, values={"power_w": 2.0})
    assert _problem(await _keyed(client, other, "key-00000002"), 422)["type"].endswith(
        ":idempotency-key-mismatch"
    )
    for bad in ("short", "x" * 129, "key with spaces", "key;00000003", ""):
        problem = _problem(await _keyed(client, READING, bad), 422)
        assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"], bad
    assert len(broker.published) == 1
    broker.store = False
    first = asyncio.create_task(_keyed(client, READING, "key-00000003"))
    for _ in range(100):
        if len(broker.published) == 2:
            break
        await asyncio.sleep(0.005)
    second = await _keyed(client, READING, "key-00000003")
    assert _problem(second, 409)["type"].endswith(":idempotency-key-in-use")
    assert second.headers["retry-after"] == "2"
    assert (await first).status_code == 503
    broker.store = True
    assert (await _keyed(client, READING, "key-00000003")).json()["first_seq"] == 2


@pytest.mark.parametrize(
    ("failure", "next_seq"), [(NotConnectedError("a"), 1), (PublishLostError("t"), 2)]
)
async def test_idempotency_key_of_a_publish_that_failed(
    client: httpx.AsyncClient, broker: FakeBroker, failure: Exception, next_seq: int
) -> None:
    """Nothing published (not connected): the key and its seqs are given back, so the retry
    is a new request; maybe published (PUBACK lost): the retry reuses the seqs and a request
    without a key takes the next ones."""
    broker.fail = failure
    _problem(await _keyed(client, READING, "key-00000004"), 503)
    broker.fail = None
    assert (await _post(client, dict(READING, charger_id="cp2"))).json()["first_seq"] == next_seq
    retry = await _keyed(client, READING, "key-00000004")
    assert retry.json()["first_seq"] == (2 if next_seq == 1 else 1)


async def test_ingest_without_broker_body_limits_and_roles(
    client: httpx.AsyncClient, broker: FakeBroker
) -> None:
    """Broker down: 503; a body over 256 KiB: 413; invalid JSON: 422; a read key: 403."""
    broker.connected = False
    _problem(await _post(client, READING), 503)
    broker.connected = True
    big = await client.post(
        "/v1/telemetry", content=b" " * (256 * 1024 + 1), headers={"X-API-Key": INGEST}
    )
    _problem(big, 413)
    bad = await client.post("/v1/telemetry", content=b"{", headers={"X-API-Key": INGEST})
    assert _problem(bad, 422)["errors"][0]["type"] == "invalid_json"
    _problem(await _post(client, READING, READ), 403)
    assert broker.published == []


# --- readiness, metrics, OpenAPI ------------------------------------------------------------


async def test_readyz_names_what_is_down(
    client: httpx.AsyncClient, fake: FakeInflux, broker: FakeBroker
) -> None:
    """200 with both up; 503 naming InfluxDB or the broker when one is down."""
    assert (await client.get("/readyz")).status_code == 200
    fake.answers.append(InfluxUnavailable("down"))
    broker.connected = False
    resp = await client.get("/readyz", headers={"X-API-Key": ""})
    assert resp.status_code == 503
    assert resp.json()["checks"]["influxdb"]["ok"] is False
    assert resp.json()["checks"]["broker"]["ok"] is False


async def test_metrics_label_route_templates_only(client: httpx.AsyncClient) -> None:
    """The latency histogram is labelled by route template and status, never the raw path."""
    await client.get("/v1/chargers/secret-id/latest")
    await client.get("/nothing/here")
    text = (await client.get("/metrics")).text
    assert 'route="/v1/chargers/{charger_id}/latest",status="404"' in text
    assert 'route="unmatched"' in text
    assert "secret-id" not in text
    assert "telemetry_api_mirror_chargers" in text


async def test_openapi_lists_every_endpoint_with_examples(client: httpx.AsyncClient) -> None:
    """Each endpoint of the contract is in the OpenAPI document, with examples."""
    spec = (await client.get("/openapi.json")).json()
    paths = ["/v1/chargers", "/v1/fleet/daily", "/v1/telemetry", "/telemetry/{charger_id}",
             "/healthz", "/readyz", "/metrics", "/v1/pipeline/status",
             "/v1/gateways/{gateway_id}/gaps", "/v1/chargers/{charger_id}", "/v1/sessions",
             "/v1/sessions/{transaction_id}", "/v1/gateways",
             "/v1/gateways/{gateway_id}"]  # fmt: skip
    paths += [
        f"/v1/chargers/{{charger_id}}/{p}" for p in ("latest", "history", "stats", "sessions")
    ]
    for path in paths:
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/telemetry"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"batch", "single", "simple"}
    schemas = spec["components"]["schemas"]
    for model in ("LatestReading", "HistoryPage", "Stats", "ChargerPage", "FleetDaily",
                  "ChargerDetail", "Session", "GatewayPage", "Gateway"):  # fmt: skip
        assert schemas[model]["examples"], model


async def test_gateways_list_pages_filters_and_shows_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """/v1/gateways: the gateways with a retained state and the one only a charger names
    (``unknown``), sorted, paged by a signed cursor, filtered by state; the heartbeat's
    fields are served; /v1/gateways/{id} adds the charger ids; an unknown id is a 404."""
    mirror = app.state.mirror
    beat: dict[str, Any] = {
        "state": "online", "ts": "2026-05-01T12:00:00Z", "agent_version": "1.2.3",
        "interval_s": 3.0, "cert_not_after": "2026-05-04T12:00:10Z",
        "outbox": {"depth": 9, "oldest_unsent_ts": "2026-05-01T11:59:00Z", "unconfirmed": 4,
                   "drops": {"budget_energy": 2}},
    }  # fmt: skip
    mirror.apply("chargers/v1/gw-a/state", orjson.dumps(beat), MONO)
    mirror.apply(
        "chargers/v1/gw-b/state", b'{"state": "offline", "ts": "2026-05-01T11:00:00Z"}', MONO
    )
    mirror.apply("chargers/v1/live/cp1", _live("cp1", "gw-a", 0, 7), MONO)
    mirror.apply("chargers/v1/live/cp2", _live("cp2", "gw-c", 0, 7), MONO)
    r = await client.get("/v1/gateways", params={"limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [(g["gateway_id"], g["state"]) for g in page["items"]] == [
        ("gw-a", "stale"), ("gw-b", "offline"),
    ]  # fmt: skip  # gw-a's heartbeat is 10 s old: more than 3 x 3 s
    a = page["items"][0]
    assert a["agent_version"] == "1.2.3"
    assert a["outbox"] == {**beat["outbox"], "oldest_unsent_ts": "2026-05-01T11:59:00.000Z"}
    assert (a["cert_days_left"], a["cert_status"]) == (3.0, "warning")
    assert a["chargers"] == {"count": 1, "href": "v1/chargers?gateway=gw-a"}
    r = await client.get("/v1/gateways", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [(g["gateway_id"], g["state"]) for g in r.json()["items"]] == [("gw-c", "unknown")]
    assert r.json()["next_cursor"] is None
    r = await client.get("/v1/gateways", params={"state": "offline"})
    assert [g["gateway_id"] for g in r.json()["items"]] == ["gw-b"]
    r = await client.get("/v1/gateways", params={"state": "offline", "cursor": page["next_cursor"]})
    assert _problem(r, 422)["type"].endswith(":invalid-cursor")

    r = await client.get("/v1/gateways/gw-a")
    assert r.status_code == 200, r.text
    assert r.json()["chargers"]["ids"] == ["cp1"]
    assert r.json()["alarms"] == []
    assert _problem(await client.get("/v1/gateways/gw-zz"), 404)["type"].endswith(":not-found")
