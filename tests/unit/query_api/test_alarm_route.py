"""``GET /v1/alarms`` as an app (create_app + a fake InfluxQL client): the query it builds, the
items it answers, and the parameters it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from query_api.app import create_app
from query_api.settings import ApiSettings
from telemetry_common.influx_query import InfluxError, Series
from tests.support.fake_influx import FakeInflux, FixedClock

READ = "read-key-0123456789"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NS = 1_777_636_800_000_000_000  # 2026-05-01T12:00:00Z
COLUMNS = ["time", "active", "cleared_at", "detail", "id", "kind", "severity", "subject"]


@pytest.fixture
def fake() -> FakeInflux:
    return FakeInflux()


@pytest.fixture
async def client(fake: FakeInflux) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(keys={"read": SecretStr(READ)})
    app = create_app(settings, influx=fake, clock=FixedClock(NOW))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", headers={"X-API-Key": READ}
        ) as c:
            yield c


async def test_active_alarms_are_read_newest_first_with_their_fields(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    rows: list[list[Any]] = [
        [NS - 10**9, True, None, "no birth", "a1", "gateway_offline", "critical", "gw-1"],
        [NS - 5 * 10**9, False, NS, "Faulted", "a2", "connector_faulted", "warning", "cp.1.1"],
    ]
    fake.answers.append([Series("alarms", COLUMNS, rows)])
    resp = await client.get("/v1/alarms", params={"kind": "gateway_offline", "limit": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    (q,) = fake.queries
    assert q.startswith('SELECT * FROM "keep"."alarms" WHERE time >= ')
    assert '"active" = true AND "kind" = \'gateway_offline\'' in q
    assert q.endswith("ORDER BY time DESC LIMIT 2")  # limit + 1: is there more?
    assert body["truncated"] is True
    assert body["items"] == [
        {
            "id": "a1",
            "kind": "gateway_offline",
            "subject": "gw-1",
            "since": "2026-05-01T11:59:59.000Z",
            "cleared_at": None,
            "severity": "critical",
            "detail": "no birth",
        }
    ]


async def test_all_covers_a_week_by_default_and_shows_cleared_at(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    rows = [[NS - 5 * 10**9, False, NS, "Faulted", "a2", "connector_faulted", "warning", "cp.1.1"]]
    fake.answers.append([Series("alarms", COLUMNS, rows)])
    body = (await client.get("/v1/alarms", params={"state": "all"})).json()
    assert body["start"] == "2026-04-24T12:00:00.000Z"
    assert "active" not in fake.queries[0]
    assert body["items"][0]["cleared_at"] == "2026-05-01T12:00:00.000Z"


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "nope"},
        {"state": "cleared"},
        {"subject": "a/b"},
        {"subject": "x' OR 1=1"},
        {"limit": 1001},
        {"start": "-400d"},
    ],
)
async def test_bad_parameters_are_422_and_query_nothing(
    client: httpx.AsyncClient, fake: FakeInflux, params: dict[str, str | int]
) -> None:
    resp = await client.get("/v1/alarms", params=params)
    assert resp.status_code == 422, resp.text
    assert fake.queries == []


async def test_alarms_need_a_read_key(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/alarms", headers={"X-API-Key": "wrong"})
    assert resp.status_code == 401


async def test_no_retention_policy_keep_yet_means_no_alarms(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """Alarms are read from ``"keep"."alarms"``: before any was stored the policy may not exist
    (a read-only replica): no alarms, not an error."""
    fake.answers.append(InfluxError("retention policy not found: keep"))
    resp = await client.get("/v1/alarms")
    assert resp.status_code == 200, resp.text
    assert resp.json()["items"] == []
    assert '"keep"."alarms"' in fake.queries[-1]
