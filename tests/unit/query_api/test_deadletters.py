"""Dead letters on the API side without servers: the id, the replay body, the payload a replay
publishes, and the routes on a fake InfluxDB and a fake broker (auth, paging, replay, 503).
The real pipeline: tests/integration/query_api/test_deadletters.py."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from query_api import cursor
from query_api.app import create_app
from query_api.deadletters import NotReplayable, ReplayRequest, item_of, replay_payload
from query_api.settings import ApiSettings
from telemetry_common.deadletters import (
    REPLAY_PROPERTY,
    DeadLetterIdError,
    DeadLetterKey,
    decode_id,
    encode_id,
)
from telemetry_common.influx_query import Series
from telemetry_common.mqtt import NoSubscribersError
from telemetry_common.settings import MqttSettings
from tests.support.fake_influx import FakeInflux, FixedClock

READ, ADMIN = "read-key-0123456789", "admin-key-0123456"
NOW = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
NS = 1_777_636_800_000_000_123
CHARGER_NOT_BOUND = "charger_not_bound"
READING = {"charger_id": "cp-1", "seq": 7, "ts": "2026-05-01T12:00:00.000Z", "values": {"p_w": 1}}
COLUMNS = [
    "time",
    "detail",
    "gateway_id",
    "index",
    "payload_b64",
    "payload_bytes",
    "reason",
    "replay_outcome",
    "replayed_at",
    "topic",
]


def _row(
    ns: int = NS, *, raw: bytes | None = None, index: int | None = 0, size: int = 0
) -> list[Any]:
    raw = orjson.dumps(READING) if raw is None else raw
    return [
        ns,
        "charger 'cp-1' is not provisioned for any gateway",
        "gw.1",
        index,
        base64.b64encode(raw).decode(),
        size or len(raw),
        CHARGER_NOT_BOUND,
        None,
        None,
        "chargers/v1/gw.1/readings",
    ]


def _series(*rows: list[Any]) -> list[Series]:
    return [Series("deadletters", COLUMNS, list(rows))]


# --- the id ----------------------------------------------------------------------------------


def test_an_id_round_trips_and_is_allow_list_safe() -> None:
    """The id is the point's key (ns, reason, gateway), URL- and topic-safe, decoded to the
    same key; a gateway id with dots survives."""
    key = DeadLetterKey(NS, "charger_not_bound", "gw.1-a_b")
    text = encode_id(key)
    assert text.replace("-", "").replace("_", "").isalnum()
    assert decode_id(text) == key
    assert key.id == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        encode_id(DeadLetterKey(NS, "r", "gw")) + "=",  # padding: not canonical
        base64.urlsafe_b64encode(b"12.reason.gw/../x").decode().rstrip("="),  # bad gateway
        base64.urlsafe_b64encode(b"12x.reason.gw").decode().rstrip("="),  # bad time
        base64.urlsafe_b64encode(b"12.Reason'.gw").decode().rstrip("="),  # bad reason
        base64.urlsafe_b64encode(b"012.reason.gw").decode().rstrip("="),  # second spelling
    ],
)
def test_a_forged_or_malformed_id_is_refused(text: str) -> None:
    """Every part is checked before it can reach InfluxQL or line protocol."""
    with pytest.raises(DeadLetterIdError):
        decode_id(text)


# --- the replay body and payload --------------------------------------------------------------


def test_replay_body_takes_ids_or_a_filter_and_is_bounded() -> None:
    """Exactly one of ids and filter; a filter names reason or gateway; at most 1,000;
    duplicate ids count once; extra keys are refused."""
    assert ReplayRequest.model_validate({"ids": ["a", "a", "b"]}).ids == ["a", "b"]
    body = ReplayRequest.model_validate({"filter": {"gateway_id": "gw-1"}, "limit": 5})
    assert body.filter is not None
    assert body.limit == 5
    bad: dict[str, Any]
    for bad in (
        {},
        {"ids": ["a"], "filter": {"reason": "x"}},
        {"filter": {}},
        {"filter": {"reason": "Bad Reason"}},
        {"filter": {"gateway_id": "gw/1"}},
        {"ids": [f"id{i}" for i in range(1001)]},
        {"filter": {"reason": "x"}, "limit": 1001},
        {"ids": ["a"], "extra": 1},
    ):
        with pytest.raises(ValidationError):
            ReplayRequest.model_validate(bad)


def test_a_reading_is_replayed_inside_a_batch_of_its_gateway_and_a_message_as_it_came() -> None:
    """A per-reading dead letter stores the reading alone: the replay wraps its bytes in a
    ReadingBatch of the dead letter's gateway; a whole message is published as stored."""
    item = item_of(dict(zip(COLUMNS, _row(), strict=True)))
    body = orjson.loads(replay_payload(item))
    assert body == {"schema": "charger-telemetry/1", "gateway_id": "gw.1", "readings": [READING]}
    whole = item_of(dict(zip(COLUMNS, _row(raw=b"{not json", index=None), strict=True)))
    assert replay_payload(whole) == b"{not json"


def test_a_reading_is_replayed_with_its_batchs_epoch() -> None:
    """A single reading's dead letter that kept its batch's epoch sends it along (the stored
    point then carries it, as gap tracking's warm-up expects); a malformed one is dropped."""
    row = dict(zip(COLUMNS, _row(), strict=True))
    body = orjson.loads(replay_payload(item_of({**row, "epoch": "0123456789abcdef"})))
    assert body["epoch"] == "0123456789abcdef"
    assert "epoch" not in orjson.loads(replay_payload(item_of({**row, "epoch": 'x"y'})))


def test_a_truncated_dead_letter_is_not_replayable() -> None:
    """payload_bytes above the stored bytes: flagged, and refused with the reason."""
    item = item_of(dict(zip(COLUMNS, _row(index=None, size=300_000), strict=True)))
    assert item.payload_truncated
    with pytest.raises(NotReplayable, match="payload_truncated"):
        replay_payload(item)


# --- the routes -------------------------------------------------------------------------------


class ReplayBroker:
    def __init__(self) -> None:
        self.connected = True
        self.published: list[tuple[str, bytes, tuple[tuple[str, str], ...]]] = []
        self.fail: Exception | None = None

    async def publish(
        self, topic: str, payload: bytes, *, user_properties: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, payload, user_properties))


@pytest.fixture
def fake() -> FakeInflux:
    return FakeInflux()


@pytest.fixture
def broker() -> ReplayBroker:
    return ReplayBroker()


@pytest.fixture
async def app(fake: FakeInflux, broker: ReplayBroker) -> AsyncIterator[FastAPI]:
    settings = ApiSettings(
        keys={"read": SecretStr(READ), "admin": SecretStr(ADMIN)},
        mqtt=MqttSettings(),
        latest_sweep_s=0,
    )
    app = create_app(settings, influx=fake, broker=broker, clock=FixedClock(NOW, 1.0))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api.test", headers={"X-API-Key": ADMIN}
    ) as c:
        yield c


async def test_dead_letters_need_the_admin_key(client: httpx.AsyncClient) -> None:
    """A read key is 403, no key 401, on every dead-letter route."""
    some = encode_id(DeadLetterKey(NS, "x", "gw"))
    for method, path in (
        ("GET", "/v1/deadletters"),
        ("GET", f"/v1/deadletters/{some}"),
        ("POST", "/v1/deadletters/replay"),
    ):
        resp = await client.request(method, path, headers={"X-API-Key": READ}, json={"ids": [some]})
        assert resp.status_code == 403, (path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        resp = await client.request(method, path, headers={"X-API-Key": ""}, json={})
        assert resp.status_code == 401, (path, resp.text)


async def test_list_pages_with_a_cursor_and_refuses_bad_filters(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """Items carry the contract's fields; a full page gives a signed cursor that continues at
    the last time shown (the ids already shown there are skipped); bad filters are 422."""
    fake.answers.append(_series(_row(NS + 2), _row(NS + 1), _row(NS)))
    resp = await client.get("/v1/deadletters", params={"limit": 2, "gateway_id": "gw.1"})
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert [decode_id(i["id"]).ns for i in page["items"]] == [NS + 2, NS + 1]
    first = page["items"][0]
    assert first["received_at"] == "2026-05-01T12:00:00.000Z"
    assert first["reason"] == CHARGER_NOT_BOUND
    assert first["index"] == 0
    assert base64.b64decode(first["payload_b64"]) == orjson.dumps(READING)
    assert first["payload_truncated"] is False
    assert first["replay_outcome"] is None
    assert "ORDER BY time DESC LIMIT 3" in fake.queries[-1]
    assert "\"gateway_id\" = 'gw.1'" in fake.queries[-1]
    fake.answers.append(_series(_row(NS + 1), _row(NS)))
    again = await client.get(
        "/v1/deadletters", params={"limit": 2, "gateway_id": "gw.1", "cursor": page["next_cursor"]}
    )
    assert again.status_code == 200, again.text
    assert f"time <= {NS + 1}" in fake.queries[-1]
    assert [decode_id(i["id"]).ns for i in again.json()["items"]] == [NS]
    assert again.json()["next_cursor"] is None
    other = await client.get(
        "/v1/deadletters", params={"limit": 2, "reason": "x", "cursor": page["next_cursor"]}
    )
    assert other.status_code == 422
    assert other.json()["type"].endswith("invalid-cursor")
    for params in (
        {"reason": "Bad'"},
        {"gateway_id": "a b"},
        {"start": "yesterday"},
        {"limit": 501},
    ):
        resp = await client.get("/v1/deadletters", params=params)
        assert resp.status_code == 422, (params, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"


async def test_get_one_and_404(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """One dead letter by id (its key in the query); unknown or malformed ids are 404."""
    key = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1")
    fake.answers.append(_series(_row()))
    resp = await client.get(f"/v1/deadletters/{key.id}")
    assert resp.status_code == 200
    assert resp.json()["id"] == key.id
    assert f"time = {NS} AND" in fake.queries[-1]
    assert (await client.get(f"/v1/deadletters/{key.id}")).status_code == 404  # nothing stored
    assert (await client.get("/v1/deadletters/x'y")).status_code == 404


async def test_replay_publishes_with_replay_of_and_refuses_what_it_cannot(
    client: httpx.AsyncClient, fake: FakeInflux, broker: ReplayBroker
) -> None:
    """By ids: a replayable one is published on its gateway's readings topic with the user
    property; a truncated one and an unknown one are refused with their reason; 202."""
    good = DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1")
    cut = DeadLetterKey(NS + 1, CHARGER_NOT_BOUND, "gw.1")
    gone = DeadLetterKey(NS + 2, CHARGER_NOT_BOUND, "gw.1")
    fake.answers += [_series(_row()), _series(_row(NS + 1, size=10**6)), []]
    resp = await client.post(
        "/v1/deadletters/replay", json={"ids": [good.id, cut.id, gone.id, "bogus!"]}
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["accepted"] == [good.id]
    reasons = {r["id"]: r["reason"] for r in body["refused"]}
    assert reasons[cut.id].startswith("payload_truncated")
    assert reasons[gone.id].startswith("not_found")
    assert reasons["bogus!"].startswith("not_found")
    [(topic, payload, props)] = broker.published
    assert topic == "chargers/v1/replay/gw.1/readings"
    assert props == ((REPLAY_PROPERTY, good.id),)
    assert orjson.loads(payload)["readings"] == [READING]


async def test_replay_by_filter_and_without_a_broker(
    client: httpx.AsyncClient, fake: FakeInflux, broker: ReplayBroker
) -> None:
    """A filter selects up to ``limit`` newest; no bridge subscribed (PUBACK 0x10) refuses them
    all with that reason; a disconnected broker is 503 with Retry-After."""
    fake.answers.append(_series(_row(NS + 1), _row(NS)))
    broker.fail = NoSubscribersError("chargers/v1/gw.1/readings")
    body = {"filter": {"reason": CHARGER_NOT_BOUND, "start": "-1d"}, "limit": 2}
    resp = await client.post("/v1/deadletters/replay", json=body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == []
    assert len(resp.json()["refused"]) == 2
    assert "0x10" in resp.json()["refused"][0]["reason"]
    assert "LIMIT 3" in fake.queries[-1]
    assert "'charger_not_bound'" in fake.queries[-1]
    broker.connected = False
    resp = await client.post("/v1/deadletters/replay", json=body)
    assert resp.status_code == 503
    assert resp.headers["retry-after"]
    assert resp.json()["type"].endswith("broker-unavailable")
    bad = await client.post("/v1/deadletters/replay", json={"filter": {}})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"


def _stored(ns: int, at: str = "2026-05-01T11:00:00.000Z") -> list[Any]:
    row = _row(ns)
    row[COLUMNS.index("replay_outcome")] = "stored"
    row[COLUMNS.index("replayed_at")] = at
    return row


async def test_replay_by_filter_skips_the_stored_ones_and_says_more_match(
    client: httpx.AsyncClient, fake: FakeInflux, broker: ReplayBroker
) -> None:
    """A filter skips the dead letters a replay has already stored (reading on past them), so
    the same filter sent again takes the next ones; the answer says whether more matched, and
    each accepted id's replayed_at before the replay."""
    again = _row(NS + 1)
    again[COLUMNS.index("replay_outcome")] = "deadlettered:charger_not_bound"
    again[COLUMNS.index("replayed_at")] = "2026-05-01T11:30:00.000Z"
    # the newest two are stored: the first read (LIMIT 2) finds none, the next reads below them
    fake.answers += [_series(_stored(NS + 3), _stored(NS + 2)), _series(again, _row(NS))]
    body = {"filter": {"reason": CHARGER_NOT_BOUND}, "limit": 1}
    resp = await client.post("/v1/deadletters/replay", json=body)
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    first = DeadLetterKey(NS + 1, CHARGER_NOT_BOUND, "gw.1").id
    assert answer["accepted"] == [first]
    assert answer["more"] is True
    assert answer["previous_replayed_at"] == {first: "2026-05-01T11:30:00.000Z"}
    assert f"time <= {NS + 2}" in fake.queries[-1]
    # the last one: nothing more
    fake.answers += [_series(_row(NS))]
    resp = await client.post("/v1/deadletters/replay", json=body)
    assert resp.json()["more"] is False
    assert resp.json()["previous_replayed_at"] == {
        DeadLetterKey(NS, CHARGER_NOT_BOUND, "gw.1").id: None
    }
    # exclude_stored false takes the stored ones too
    fake.answers += [_series(_stored(NS + 3), _stored(NS + 2))]
    body = {"filter": {"reason": CHARGER_NOT_BOUND, "exclude_stored": False}, "limit": 1}
    resp = await client.post("/v1/deadletters/replay", json=body)
    assert resp.json()["accepted"] == [DeadLetterKey(NS + 3, CHARGER_NOT_BOUND, "gw.1").id]
    assert resp.json()["more"] is True


async def test_list_can_leave_out_the_stored_ones(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """exclude_stored=true on GET skips what a replay stored; its cursor carries on below."""
    fake.answers += [_series(_stored(NS + 2), _row(NS + 1), _row(NS))]
    resp = await client.get("/v1/deadletters", params={"limit": 1, "exclude_stored": "true"})
    page = resp.json()
    assert [decode_id(i["id"]).ns for i in page["items"]] == [NS + 1]
    assert page["next_cursor"]
    fake.answers += [_series(_row(NS + 1), _row(NS))]
    resp = await client.get(
        "/v1/deadletters",
        params={"limit": 1, "exclude_stored": "true", "cursor": page["next_cursor"]},
    )
    assert [decode_id(i["id"]).ns for i in resp.json()["items"]] == [NS]
    assert resp.json()["next_cursor"] is None
    other = await client.get("/v1/deadletters", params={"limit": 1, "cursor": page["next_cursor"]})
    assert other.status_code == 422


async def test_a_signed_cursor_may_not_span_beyond_the_range_limit(
    app: FastAPI, client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """A dead-letter cursor carrying our signature (a leaked key) must still describe a window
    the first request could have asked (at most MAX_RANGE, the resume point inside it);
    otherwise 422 invalid-cursor, and nothing is asked of InfluxDB. (Its list of ids already
    returned is bounded by the cursor's length, MAX_CURSOR_CHARS.)"""
    q = cursor.fingerprint("deadletters", None, None, None, None, False)
    day = 86_400 * 10**9
    cursors = app.state.cursors
    forged = [
        {"a": NS - 20 * 366 * day, "b": NS, "t": NS, "s": []},  # twenty years
        {"a": NS, "b": NS + day, "t": NS - day, "s": []},  # resumes before its window
        {"a": NS, "b": NS - day, "t": NS, "s": []},  # a window upside down
    ]
    for body in forged:
        resp = await client.get(
            "/v1/deadletters", params={"cursor": cursors.encode("deadletters", q, body)}
        )
        assert resp.status_code == 422, (body["a"], resp.text)
        assert resp.json()["type"].endswith("invalid-cursor")
    assert fake.queries == []
    fake.answers.append(_series())
    fine = cursors.encode("deadletters", q, {"a": NS - day, "b": NS, "t": NS, "s": ["x"]})
    assert (await client.get("/v1/deadletters", params={"cursor": fine})).status_code == 200
