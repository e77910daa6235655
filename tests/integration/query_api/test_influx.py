"""query_api against a real InfluxDB 1.x (the ``influx_db`` fixture): points written with line
protocol per the schema of the contract, read back through create_app with real settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from query_api.app import create_app
from query_api.problems import MEDIA_TYPE
from query_api.settings import ApiSettings
from telemetry_common import influxql
from telemetry_common.influx_query import (
    InfluxQLClient,
    InfluxQueryError,
    InfluxUnavailable,
    Series,
)
from telemetry_common.settings import InfluxSettings
from telemetry_stack.servers import free_port
from tests.support.fixtures import InfluxTarget

pytestmark = pytest.mark.integration

READ = "integration-read-key-0123"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)

Write = Callable[..., Awaitable[None]]


def _ns(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1) * 1000


def _line(
    charger_id: str,
    ts: datetime,
    seq: int,
    values: dict[str, float],
    *,
    gateway_id: str = "gw-1",
    evse_id: int = 1,
    connector_id: int = 1,
    status: str | None = "Charging",
) -> str:
    """One point as the contract stores a reading (values as floats, status string, seq int)."""
    tags = (
        f"charger_id={charger_id},gateway_id={gateway_id},"
        f"evse_id={evse_id},connector_id={connector_id}"
    )
    fields = [f"{k}={float(v)!r}" for k, v in values.items()]
    if status is not None:
        fields.append(f'status="{status}"')
    fields.append(f"seq={seq}i")
    return f"readings,{tags} {','.join(fields)} {_ns(ts)}"


@pytest.fixture
async def write(influx_db: InfluxTarget) -> AsyncIterator[Write]:
    async with httpx.AsyncClient(base_url=influx_db.url, timeout=10.0) as http:

        async def write(*lines: str) -> None:
            resp = await http.post(
                "/write",
                params={"db": influx_db.database, "precision": "ns"},
                content="\n".join(lines).encode(),
            )
            assert resp.status_code == 204, resp.text

        yield write


def _settings(url: str, database: str, **overrides: Any) -> ApiSettings:
    return ApiSettings(
        keys={"read": SecretStr(READ)},
        influx=InfluxSettings(url=url, database=database, timeout_s=5.0),
        **overrides,
    )


async def _api(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", headers={"X-API-Key": READ}
        ) as client:
            yield client


@pytest.fixture
async def api(influx_db: InfluxTarget) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan and InfluxQLClient included) on the test database."""
    # The readings here are stamped on fixed dates (2026-05-01): raw retention long enough
    # that those windows are still read from raw readings (not from rollups).
    settings = _settings(
        influx_db.url,
        influx_db.database,
        history_max_points=50,
        raw_retention=timedelta(days=36_500),
    )
    async for client in _api(settings):
        yield client


# --- latest ---------------------------------------------------------------------------------


async def test_latest_returns_the_stored_reading_exactly(
    api: httpx.AsyncClient, write: Write
) -> None:
    """Values, ts (ms), seq, status and tags come back as written; age_s is now - ts."""
    values = {"energy_wh": 12345.6, "power_w": 7200.0, "current_a": 31.8, "soc_pct": 64.0}
    await write(_line("gw-1-cp001", T0, 1842, values, evse_id=2, connector_id=3))
    resp = await api.get("/v1/chargers/gw-1-cp001/latest")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    age = body.pop("age_s")
    assert body == {
        "charger_id": "gw-1-cp001",
        "gateway_id": "gw-1",
        "evse_id": 2,
        "connector_id": 3,
        "seq": 1842,
        "ts": "2026-05-01T12:00:00.123Z",
        "status": "Charging",
        "values": values,
        "state": "offline",  # T0 is far in the past
        "source": "influxdb",  # no broker: no mirror
    }
    expected_age = (datetime.now(UTC) - T0).total_seconds()
    assert abs(age - expected_age) < 30


async def test_latest_means_newest_ts_not_last_written(
    api: httpx.AsyncClient, write: Write
) -> None:
    """A late, older reading written after the newest one does not become latest."""
    newest = T0 + timedelta(minutes=5)
    await write(_line("gw-1-cp002", newest, 20, {"power_w": 2.0}, status="Finishing"))
    await write(_line("gw-1-cp002", T0, 10, {"power_w": 1.0}, status="Charging"))
    body = (await api.get("/v1/chargers/gw-1-cp002/latest")).json()
    assert body["ts"] == "2026-05-01T12:05:00.123Z"
    assert body["seq"] == 20
    assert body["status"] == "Finishing"
    assert body["values"] == {"power_w": 2.0}


async def test_latest_spans_connectors_and_only_fields_of_that_point(
    api: httpx.AsyncClient, write: Write
) -> None:
    """The newest point over all of a charger's connectors wins; its null columns are left out."""
    await write(
        _line("gw-1-cp003", T0 + timedelta(seconds=2), 2, {"power_w": 5.0}, evse_id=2),
        _line("gw-1-cp003", T0, 1, {"power_w": 9.0, "soc_pct": 50.0}, evse_id=1),
    )
    body = (await api.get("/v1/chargers/gw-1-cp003/latest")).json()
    assert body["evse_id"] == 2
    assert body["values"] == {"power_w": 5.0}


async def test_latest_matches_the_charger_id_exactly(api: httpx.AsyncClient, write: Write) -> None:
    """cp1 is not cp10: the filter is equality, not a prefix or pattern."""
    await write(_line("cp10", T0, 1, {"power_w": 10.0}))
    resp = await api.get("/v1/chargers/cp1/latest")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == MEDIA_TYPE
    assert (await api.get("/v1/chargers/cp10/latest")).json()["values"] == {"power_w": 10.0}


async def test_latest_is_404_in_an_empty_database(api: httpx.AsyncClient) -> None:
    """No measurement at all yet: 404 problem, not a 5xx."""
    resp = await api.get("/v1/chargers/gw-1-cp001/latest")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "no reading stored for charger 'gw-1-cp001'"


class CountingInflux:
    """The real client, counting the queries that reach InfluxDB."""

    def __init__(self, client: InfluxQLClient) -> None:
        self.client = client
        self.queries: list[str] = []

    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        return await self.client.query(q)

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        self.queries.append(q)
        return await self.client.query_chunked(q)


async def test_concurrent_cold_latest_requests_share_a_few_queries(
    influx_db: InfluxTarget, write: Write
) -> None:
    """200 chargers just stored, none in the mirror, 200 concurrent ``latest``: a few InfluxDB
    queries answer them all (one query per request before), each with its own newest reading
    (a charger's older point and a neighbour's newer one do not leak in)."""
    n = 200
    await write(
        *(_line(f"cold-{i}", T0, i, {"power_w": float(i)}) for i in range(n)),
        *(_line(f"cold-{i}", T0 - timedelta(seconds=1), 10_000 + i, {"power_w": -1.0})
          for i in range(n)),
    )  # fmt: skip
    settings = _settings(influx_db.url, influx_db.database)
    async with InfluxQLClient(settings.influx) as client:
        influx = CountingInflux(client)
        app = create_app(settings, influx=influx)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api.test", headers={"X-API-Key": READ}
            ) as api:
                answers = await asyncio.gather(
                    *(api.get(f"/v1/chargers/cold-{i}/latest") for i in range(n))
                )
    assert [a.status_code for a in answers] == [200] * n
    assert [(a.json()["seq"], a.json()["values"]) for a in answers] == [
        (i, {"power_w": float(i)}) for i in range(n)
    ]
    assert 1 <= len(influx.queries) <= 5, len(influx.queries)


# --- history --------------------------------------------------------------------------------


async def _seed_minutes(write: Write, charger_id: str, n: int) -> None:
    await write(
        *(
            _line(charger_id, T0 + timedelta(minutes=i), i, {"power_w": float(i), "soc_pct": 50.0})
            for i in range(n)
        )
    )


async def test_history_returns_the_half_open_range_oldest_first(
    api: httpx.AsyncClient, write: Write
) -> None:
    """start is inclusive, end exclusive; points are oldest first with their seq and values."""
    await _seed_minutes(write, "gw-1-cp004", 10)
    resp = await api.get(
        "/v1/chargers/gw-1-cp004/history",
        params={"start": "2026-05-01T12:02:00.123Z", "end": "2026-05-01T12:05:00.123Z"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [p["seq"] for p in body["points"]] == [2, 3, 4]
    assert body["points"][0] == {
        "ts": "2026-05-01T12:02:00.123Z",
        "gateway_id": "gw-1",
        "evse_id": 1,
        "connector_id": 1,
        "seq": 2,
        "status": "Charging",
        "values": {"power_w": 2.0, "soc_pct": 50.0},
    }
    assert body["truncated"] is False


async def test_history_limit_and_fields(api: httpx.AsyncClient, write: Write) -> None:
    """limit cuts the page (truncated=true); fields keeps only the named values."""
    await _seed_minutes(write, "gw-1-cp005", 10)
    resp = await api.get(
        "/v1/chargers/gw-1-cp005/history",
        params={
            "start": "2026-05-01T12:00:00Z",
            "end": "2026-05-01T13:00:00Z",
            "limit": 4,
            "fields": "power_w",
        },
    )
    body = resp.json()
    assert body["truncated"] is True
    assert [p["values"] for p in body["points"]] == [{"power_w": float(i)} for i in range(4)]


async def test_history_limit_cap_is_422(api: httpx.AsyncClient) -> None:
    """A limit above history_max_points is refused with the cap in the detail."""
    resp = await api.get("/v1/chargers/gw-1-cp005/history", params={"limit": 51})
    assert resp.status_code == 422
    assert "50" in resp.json()["detail"]


async def test_history_downsampled(api: httpx.AsyncClient, write: Write) -> None:
    """every + agg aggregates per bucket over the range, in InfluxDB."""
    await _seed_minutes(write, "gw-1-cp006", 10)  # power_w = 0..9 at 12:00..12:09
    params = {"start": "2026-05-01T12:00:00Z", "end": "2026-05-01T12:10:00Z", "every": "5m"}
    mean = (await api.get("/v1/chargers/gw-1-cp006/history", params=params)).json()
    assert [p["values"]["power_w"] for p in mean["points"]] == [2.0, 7.0]
    assert [p["ts"] for p in mean["points"]] == [
        "2026-05-01T12:00:00.000Z",
        "2026-05-01T12:05:00.000Z",
    ]
    assert mean["points"][0]["values"] == {"power_w": 2.0, "soc_pct": 50.0}
    counted = (
        await api.get(
            "/v1/chargers/gw-1-cp006/history",
            params={**params, "agg": "count", "fields": "power_w"},
        )
    ).json()
    assert [p["values"] for p in counted["points"]] == [{"power_w": 5.0}, {"power_w": 5.0}]


# --- the client and quoting against the real parser -----------------------------------------


@pytest.mark.parametrize("tag_value", ["it's", "back\\slash", "both\\'s", 'dq"x'])
async def test_quoted_literals_match_what_influxdb_parses(
    influx_db: InfluxTarget, write: Write, tag_value: str
) -> None:
    """quote_string of hostile text is one literal equal to the stored tag value in InfluxDB."""
    escaped = tag_value.replace("\\", "\\\\") if tag_value.endswith("\\") else tag_value
    await write(f"hostile,name={escaped} v=1.0 {_ns(T0)}")
    query = (
        f"SELECT {influxql.quote_ident('v')} FROM {influxql.quote_ident('hostile')} "
        f"WHERE {influxql.quote_ident('name')} = {influxql.quote_string(tag_value)}"
    )
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    async with InfluxQLClient(settings) as client:
        series = await client.query(query)
    assert [row["v"] for s in series for row in s.rows()] == [1]


async def test_injection_attempt_is_just_a_string(influx_db: InfluxTarget, write: Write) -> None:
    """A `'; DROP DATABASE` literal matches nothing and drops nothing."""
    await write(_line("gw-1-cp001", T0, 1, {"power_w": 1.0}))
    hostile = f'x\'; DROP DATABASE "{influx_db.database}"; --'
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    async with InfluxQLClient(settings) as client:
        query = f'SELECT * FROM "readings" WHERE "charger_id" = {influxql.quote_string(hostile)}'
        assert await client.query(query) == []
        rows = await client.query(influxql.latest_per_charger_query(["gw-1-cp001"]))
    assert rows[0].rows()[0]["seq"] == 1


async def test_client_translates_influx_errors(influx_db: InfluxTarget) -> None:
    """A query InfluxDB cannot parse is InfluxQueryError (400); a missing database is
    InfluxUnavailable; both keep InfluxDB's message."""
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    async with InfluxQLClient(settings) as client:
        with pytest.raises(InfluxQueryError) as bad:
            await client.query("SELEC nothing")
        assert bad.value.status == 400
        assert "error parsing query" in bad.value.message
    missing = InfluxSettings(url=influx_db.url, database="no_such_db_here")
    async with InfluxQLClient(missing) as client:
        with pytest.raises(InfluxUnavailable, match="database not found"):
            await client.query(influxql.latest_per_charger_query(["gw-1-cp001"]))


async def test_chunked_query_gives_the_same_series_and_errors(
    influx_db: InfluxTarget, write: Write
) -> None:
    """query_chunked (InfluxDB streams one document per series) returns exactly what query
    returns for 1,200 series, and translates InfluxDB's errors the same way."""
    await write(
        "\n".join(
            _line(f"gw-1-cp{i:04d}", T0 + timedelta(seconds=i % 7), i, {"power_w": float(i)})
            for i in range(1200)
        )
    )
    settings = InfluxSettings(url=influx_db.url, database=influx_db.database)
    async with InfluxQLClient(settings) as client:
        q = influxql.newest_per_charger_query()
        whole = await client.query(q)
        streamed = await client.query_chunked(q)
        assert len(whole) == 1200
        assert streamed == whole
        with pytest.raises(InfluxQueryError) as bad:
            await client.query_chunked("SELEC nothing")
        assert bad.value.status == 400
    missing = InfluxSettings(url=influx_db.url, database="no_such_db_here")
    async with InfluxQLClient(missing) as client:
        with pytest.raises(InfluxUnavailable, match="database not found"):
            await client.query_chunked(q)


async def test_client_states(influx_db: InfluxTarget) -> None:
    """A client answers only while opened and cannot be reopened."""
    client = InfluxQLClient(InfluxSettings(url=influx_db.url, database=influx_db.database))
    assert client.state == "unopened"
    with pytest.raises(RuntimeError, match="unopened"):
        await client.query("SHOW DATABASES")
    async with client:
        assert client.state == "opened"
        assert await client.query("SHOW MEASUREMENTS") == []
    assert client.state == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        await client.query("SHOW DATABASES")
    with pytest.raises(RuntimeError, match="cannot open"):
        await client.__aenter__()


async def test_unreachable_influx_is_503() -> None:
    """Nothing listening on the InfluxDB port: the client raises InfluxUnavailable, the API
    answers a 503 problem."""
    url = f"http://127.0.0.1:{free_port()}"
    async with InfluxQLClient(InfluxSettings(url=url, timeout_s=2.0)) as client:
        with pytest.raises(InfluxUnavailable):
            await client.query("SHOW DATABASES")
    async for api in _api(_settings(url, "telemetry")):
        resp = await api.get("/v1/chargers/gw-1-cp001/latest")
        assert resp.status_code == 503
        assert resp.headers["content-type"] == MEDIA_TYPE
