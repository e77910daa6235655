"""The one read path of the hot routes (``latest``, ``history``): FastAPI routes whose endpoints
check the key first, with the function every route uses, then the id and the query; the lean
dispatch (query_api.lean) calls those same endpoints and answers what FastAPI's own routing
answers. ``latest`` answers from memory when the mirror is trusted and from InfluxDB otherwise;
errors are the problems of every other route; downsampled history is answered again from the
one page cache, raw and paged history never."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp

from query_api import problems
from query_api.app import create_app
from query_api.problems import MEDIA_TYPE
from query_api.routes import chargers, history
from query_api.settings import ApiSettings
from telemetry_common.influx_query import Series
from telemetry_common.settings import MqttSettings
from tests.support.fake_influx import FakeInflux

READ, INGEST, ADMIN = "read-key-0123456789", "ingest-key-012345", "admin-key-0123456"


class FakeBroker:
    connected = True

    async def publish(self, topic: str, payload: bytes) -> None:
        raise AssertionError("not used")


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    settings = ApiSettings(
        keys={"read": SecretStr(READ), "ingest": SecretStr(INGEST), "admin": SecretStr(ADMIN)},
        mqtt=MqttSettings(),
        latest_sweep_s=0,
    )
    app = create_app(settings, influx=FakeInflux(), broker=FakeBroker())
    async with app.router.lifespan_context(app):
        yield app


def _trust(app: FastAPI, charger: str, ts: str = "2026-05-01T12:00:00Z") -> None:
    payload = orjson.dumps(
        {"charger_id": charger, "gateway_id": "gw-1", "evse_id": 1, "connector_id": 1, "seq": 9,
         "ts": ts, "status": "Charging", "values": {"power_w": 7.5}}
    )  # fmt: skip
    mono = time.monotonic()
    app.state.mirror.apply(f"chargers/v1/live/{charger}", payload, mono - 10)
    app.state.mirror.get(charger).checked = mono - 1


async def _get(app: FastAPI | ASGIApp, path: str, key: str | None = READ) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        return await c.get(path, headers=headers)


def _fastapi_routing(app: FastAPI) -> FastAPI:
    """The same routes and state in a FastAPI app without the lean dispatch."""
    plain = FastAPI()
    plain.state = app.state
    problems.install(plain)
    plain.include_router(chargers.router)
    plain.include_router(history.router)
    return plain


@pytest.mark.parametrize(
    "path", ["/v1/chargers/cp1/latest", "/v1/chargers/cp1/history?start=-1h&every=5m"]
)
async def test_the_lean_dispatch_answers_what_fastapi_routing_answers(
    app: FastAPI, path: str
) -> None:
    """The same endpoint reached through the lean dispatch and through FastAPI's router: the
    same status, content type and document."""
    _trust(app, "cp1")
    app.state.influx.answers.append([Series("readings", BUCKETS, [[NS, 1.5]])])
    lean = await _get(app, path)
    routed = await _get(_fastapi_routing(app), path)
    assert lean.status_code == routed.status_code == 200
    assert lean.headers["content-type"] == routed.headers["content-type"] == "application/json"
    a, b = lean.json(), routed.json()
    assert abs(a.pop("age_s", 0) - b.pop("age_s", 0)) < 5
    assert a == b


async def test_a_trusted_value_is_answered_from_memory(app: FastAPI) -> None:
    """A trusted mirror value is the whole LatestReading document (JSON, no InfluxDB query), by
    a read or an admin key; the requests are timed under the route's template."""
    _trust(app, "cp1")
    first = await _get(app, "/v1/chargers/cp1/latest")
    again = await _get(app, "/v1/chargers/cp1/latest", key=ADMIN)
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == again.headers["content-type"] == "application/json"
    f, s = first.json(), again.json()
    assert abs(f.pop("age_s") - s.pop("age_s")) < 5
    assert f == s
    assert f == {
        "charger_id": "cp1", "gateway_id": "gw-1", "evse_id": 1, "connector_id": 1, "seq": 9,
        "ts": "2026-05-01T12:00:00.000Z", "status": "Charging", "values": {"power_w": 7.5},
        "state": "offline", "source": "mirror",
    }  # fmt: skip
    assert app.state.influx.queries == []
    metrics = (await _get(app, "/metrics", key=None)).text
    label = 'route="/v1/chargers/{charger_id}/latest",status="200"'
    line = next(x for x in metrics.splitlines() if "_count{" in x and label in x)
    assert line.endswith(" 2.0")


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [
        ("/v1/chargers/cp1/latest", None, 401),
        ("/v1/chargers/cp1/latest", "wrong-key-0123456789", 401),
        ("/v1/chargers/cp1/latest", INGEST, 403),
        ("/v1/chargers/unknown/latest", READ, 404),
        ("/v1/chargers/cp1%27%20OR%201=1/latest", READ, 422),
        ("/v1/chargers/cp1%27%20OR%201=1/latest", None, 401),  # the key is checked first
    ],
)
async def test_refusals_are_problems(app: FastAPI, path: str, key: str | None, status: int) -> None:
    """Missing, wrong or other-role keys, an unknown charger and a hostile id get problem
    documents."""
    _trust(app, "cp1")
    resp = await _get(app, path, key)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == MEDIA_TYPE


async def test_an_untrusted_value_asks_influx(app: FastAPI) -> None:
    """A mirrored value not yet confirmed by InfluxDB is not served from memory alone: InfluxDB
    is asked (here: nothing stored) and the newer of the two answers."""
    _trust(app, "cp1")
    app.state.mirror.get("cp1").checked = float("-inf")
    resp = await _get(app, "/v1/chargers/cp1/latest")
    assert resp.status_code == 200
    assert len(app.state.influx.queries) == 1


BUCKETS = ["time", "mean_power_w"]
NS = 1_777_636_800_000_000_000


async def test_a_downsampled_history_answer_is_reused_while_its_page_is_fresh(
    app: FastAPI,
) -> None:
    """The same downsampled request again is answered with the same bytes from the page cache
    (one InfluxDB query); a wrong key still gets 401; once the page is older than
    HISTORY_CACHE_S (three times: beyond stale-while-rebuilding) it is built again."""
    app.state.history_cache.ttl_s = 0.3
    app.state.influx.answers.append([Series("readings", BUCKETS, [[NS, 1.5]])])
    path = "/v1/chargers/cp1/history?start=-1h&every=5m"
    first = await _get(app, path)
    again = await _get(app, path)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["content-type"] == "application/json"
    cache = app.state.history_cache
    assert (cache.misses, cache.hits) == (1, 1)
    assert len(app.state.influx.queries) == 1
    refused = await _get(app, path, key="wrong-key-0123456789")
    assert refused.status_code == 401
    assert cache.hits + cache.misses == 2  # refused before the cache
    await asyncio.sleep(0.95)
    await _get(app, path)
    assert (cache.misses, len(app.state.influx.queries)) == (2, 2)  # expired: built again


@pytest.mark.parametrize(
    "query",
    ["start=-1h", "start=-1h&every=5m&cursor=abc", "start=-1h&every=0s"],
)
async def test_raw_paged_or_refused_history_is_never_cached(app: FastAPI, query: str) -> None:
    """Raw points, cursor pages and refused requests are answered anew every time."""
    path = f"/v1/chargers/cp1/history?{query}"
    statuses = [(await _get(app, path)).status_code for _ in range(2)]
    assert statuses[0] == statuses[1]
    if statuses[0] == 200:
        assert len(app.state.influx.queries) == 2


async def test_history_reports_path_and_query_errors_together_and_reads_repeated_fields(
    app: FastAPI,
) -> None:
    """A bad id and a bad limit are one 422 listing both (as FastAPI reports them); ``fields``
    repeated is read as every value, a scalar repeated as its last value."""
    resp = await _get(app, "/v1/chargers/bad%20id/history?limit=ten")
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["errors"]] == [["path", "charger_id"], ["query", "limit"]]
    app.state.influx.answers.append([])
    resp = await _get(app, "/v1/chargers/cp1/history?fields=power_w&fields=soc_pct&limit=1&limit=7")
    assert resp.status_code == 200, resp.text
    assert resp.json()["fields"] == ["power_w", "soc_pct"]
    assert resp.json()["limit"] == 7
