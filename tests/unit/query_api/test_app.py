"""query_api as an app (create_app + a fake InfluxQL client): auth, problems, parameters.

The fake records the InfluxQL it is sent and answers with canned series, so these tests pin the
HTTP behaviour and the query a request produces without a server; the real InfluxDB is exercised
in tests/integration/query_api/test_influx.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from query_api.__main__ import main
from query_api.app import create_app
from query_api.problems import MEDIA_TYPE
from query_api.settings import ApiSettings
from query_api.timespec import TimeSpecError, parse_duration, parse_instant, resolve_window
from telemetry_common.errors import ConfigError
from telemetry_common.influx_query import (
    InfluxQLClient,
    InfluxQueryError,
    InfluxUnavailable,
    Series,
)
from telemetry_common.settings import InfluxSettings, env_for, env_name
from tests.support.fake_influx import FakeInflux, FixedClock

READ, INGEST, ADMIN = "read-key-0123456789", "ingest-key-0123456789", "admin-key-0123456789"
NOW = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
TS_NS = 1_777_636_800_123_000_000  # 2026-05-01T12:00:00.123Z
COLUMNS = [
    "time",
    "charger_id",
    "connector_id",
    "energy_wh",
    "evse_id",
    "gateway_id",
    "power_w",
    "seq",
    "soc_pct",
    "status",
]


def _settings(**overrides: Any) -> ApiSettings:
    return ApiSettings(
        keys={"read": SecretStr(READ), "ingest": SecretStr(INGEST), "admin": SecretStr(ADMIN)},
        **overrides,
    )


@pytest.fixture
def fake() -> FakeInflux:
    return FakeInflux()


@pytest.fixture
async def client(fake: FakeInflux) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(history_max_points=500, history_default_limit=100)
    app = create_app(settings, influx=fake, clock=FixedClock(NOW))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


def _assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == MEDIA_TYPE
    body: dict[str, Any] = resp.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


# --- health, auth ---------------------------------------------------------------------------


async def test_healthz_needs_no_key(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """/healthz answers 200 {"status": "ok"} without a key and without touching InfluxDB."""
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert fake.queries == []


async def test_missing_key_is_401_with_a_challenge(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """No X-API-Key: 401 problem naming the header in WWW-Authenticate; no query is run."""
    resp = await client.get("/v1/chargers/gw-1-cp001/latest")
    body = _assert_problem(resp, 401)
    assert "X-API-Key" in resp.headers["www-authenticate"]
    assert "X-API-Key" in body["detail"]
    assert fake.queries == []


@pytest.mark.parametrize("key", ["wrong", READ + "x", READ[:-1], READ.upper(), " "])
async def test_wrong_key_is_401(client: httpx.AsyncClient, fake: FakeInflux, key: str) -> None:
    """A key that is not configured (even a near miss) is 401, not 403."""
    resp = await client.get("/v1/chargers/gw-1-cp001/latest", headers={"X-API-Key": key})
    _assert_problem(resp, 401)
    assert "www-authenticate" in resp.headers
    assert fake.queries == []


async def test_key_of_another_role_is_403(client: httpx.AsyncClient, fake: FakeInflux) -> None:
    """An ingest key is known but may not read: 403 problem, no query."""
    resp = await client.get("/v1/chargers/gw-1-cp001/latest", headers={"X-API-Key": INGEST})
    body = _assert_problem(resp, 403)
    assert "read" in body["detail"]
    assert fake.queries == []


@pytest.mark.parametrize("key", [READ, ADMIN])
async def test_read_and_admin_keys_may_read(
    client: httpx.AsyncClient, fake: FakeInflux, key: str
) -> None:
    """The read role and admin (who may do everything) get past authentication."""
    resp = await client.get("/v1/chargers/gw-1-cp001/latest", headers={"X-API-Key": key})
    _assert_problem(resp, 404)  # the fake stores nothing
    assert len(fake.queries) == 1


async def test_authentication_comes_before_validation(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """Without a key an invalid id is still 401: callers without a key learn nothing."""
    resp = await client.get("/v1/chargers/bad'id/latest")
    _assert_problem(resp, 401)


# --- latest ---------------------------------------------------------------------------------


async def test_latest_shapes_the_row_as_a_reading(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """The newest row becomes a docs/design.md reading (ints, floats, RFC 3339 ms Z) plus age_s."""
    row = [TS_NS, "gw-1-cp001", "2", 12345, "1", "gw-1", 7200, 42, None, "Charging"]
    tags = {"charger_id": "gw-1-cp001"}  # one series per charger
    fake.answers.append([Series(name="readings", columns=COLUMNS, values=[row], tags=tags)])
    resp = await client.get("/v1/chargers/gw-1-cp001/latest", headers={"X-API-Key": READ})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "charger_id": "gw-1-cp001",
        "gateway_id": "gw-1",
        "evse_id": 1,
        "connector_id": 2,
        "seq": 42,
        "ts": "2026-05-01T12:00:00.123Z",
        "status": "Charging",
        "values": {"energy_wh": 12345.0, "power_w": 7200.0},
        "age_s": 9.877,
        "state": "online",
        "source": "influxdb",
    }
    assert fake.queries == [
        'SELECT * FROM "readings" WHERE "charger_id" = \'gw-1-cp001\' '
        'GROUP BY "charger_id" ORDER BY time DESC LIMIT 1'
    ]


async def test_latest_without_data_is_a_404_problem(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """No stored reading: 404 problem naming the charger."""
    resp = await client.get("/v1/chargers/gw-9-cp001/latest", headers={"X-API-Key": READ})
    body = _assert_problem(resp, 404)
    assert "gw-9-cp001" in body["detail"]


@pytest.mark.parametrize(
    "charger_id", ["bad'id", 'bad"id', "bad%5Cid", "bad%0Aid", "x;DROP", "a" * 65, "é", "a%20b"]
)
async def test_ids_outside_the_allow_list_are_422_before_any_query(
    client: httpx.AsyncClient, fake: FakeInflux, charger_id: str
) -> None:
    """An id outside ^[A-Za-z0-9._-]{1,64}$ is a 422 problem and never reaches InfluxDB."""
    for path in ("latest", "history"):
        resp = await client.get(f"/v1/chargers/{charger_id}/{path}", headers={"X-API-Key": READ})
        body = _assert_problem(resp, 422)
        assert body["errors"][0]["loc"] == ["path", "charger_id"]
    assert fake.queries == []


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InfluxUnavailable("connection refused"), 503),
        (InfluxUnavailable("database not found: telemetry", status=200), 503),
        (InfluxQueryError("error parsing query", status=400), 502),
    ],
)
async def test_influx_failures_are_problems(
    client: httpx.AsyncClient, fake: FakeInflux, error: Exception, status: int
) -> None:
    """A store that is down is 503, one that refuses the query 502; InfluxDB's text stays inside."""
    fake.answers.append(error)
    resp = await client.get("/v1/chargers/gw-1-cp001/latest", headers={"X-API-Key": READ})
    body = _assert_problem(resp, status)
    assert "parsing" not in body["detail"]
    assert "not found" not in body["detail"]


async def test_unknown_paths_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    """Starlette's own 404 and 405 answers are problem+json too."""
    _assert_problem(await client.get("/v1/nothing-here"), 404)
    _assert_problem(await client.post("/healthz"), 405)


# --- history --------------------------------------------------------------------------------


def _history(client: httpx.AsyncClient, **params: Any) -> Any:
    return client.get("/v1/chargers/gw-1-cp001/history", params=params, headers={"X-API-Key": READ})


async def test_history_defaults_to_the_last_hour(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """No start/end: [now - 1h, now), the default limit, raw points with tags and meta."""
    row = [TS_NS, "gw-1-cp001", "1", 10.0, "1", "gw-1", 7.0, 5, None, "Charging"]
    fake.answers.append([Series(name="readings", columns=COLUMNS, values=[row])])
    resp = await _history(client)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["start"] == "2026-05-01T11:00:10.000Z"
    assert body["end"] == "2026-05-01T12:00:10.000Z"
    assert body["limit"] == 100
    assert body["truncated"] is False
    assert body["points"] == [
        {
            "ts": "2026-05-01T12:00:00.123Z",
            "gateway_id": "gw-1",
            "evse_id": 1,
            "connector_id": 1,
            "seq": 5,
            "status": "Charging",
            "values": {"energy_wh": 10.0, "power_w": 7.0},
        }
    ]
    assert fake.queries == [
        'SELECT * FROM "readings" WHERE "charger_id" = \'gw-1-cp001\' '
        "AND time >= '2026-05-01T11:00:10.000000Z' AND time < '2026-05-01T12:00:10.000000Z' "
        "ORDER BY time ASC LIMIT 100"
    ]


async def test_history_passes_range_fields_and_limit(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """RFC 3339 and relative times, comma-separated and repeated fields, an explicit limit."""
    resp = await _history(
        client,
        start="2026-05-01T13:00:00+02:00",
        end="-5m",
        fields=["power_w,soc_pct", "power_w"],
        limit=2,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["fields"] == ["power_w", "soc_pct"]
    assert body["start"] == "2026-05-01T11:00:00.000Z"
    assert body["end"] == "2026-05-01T11:55:10.000Z"
    assert fake.queries == [
        'SELECT "status", "seq", "power_w", "soc_pct", "gateway_id", "evse_id", "connector_id" '
        'FROM "readings" WHERE "charger_id" = \'gw-1-cp001\' '
        "AND time >= '2026-05-01T11:00:00.000000Z' AND time < '2026-05-01T11:55:10.000000Z' "
        "ORDER BY time ASC LIMIT 2"
    ]


async def test_history_reports_truncation_at_the_limit(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """A page holding exactly limit points says more may follow."""
    rows = [[TS_NS + i, "gw-1-cp001", "1", 1.0, "1", "gw-1", 2.0, i, None, None] for i in range(2)]
    fake.answers.append([Series(name="readings", columns=COLUMNS, values=rows)])
    body = (await _history(client, limit=2)).json()
    assert body["truncated"] is True
    assert [p["seq"] for p in body["points"]] == [0, 1]
    assert "status" not in body["points"][0]


async def test_limit_above_the_cap_is_a_clear_422(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """limit over history_max_points: 422 naming the cap; no query."""
    body = _assert_problem(await _history(client, limit=501), 422)
    assert "500" in body["detail"]
    assert body["type"].endswith("limit-too-large")
    assert fake.queries == []


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
async def test_non_positive_or_non_numeric_limit_is_422(
    client: httpx.AsyncClient, fake: FakeInflux, limit: str
) -> None:
    """limit must be a positive integer."""
    _assert_problem(await _history(client, limit=limit), 422)
    assert fake.queries == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"start": "-1826d"}, "exceeds the maximum of 1825d"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2026-05-01T00:00:00Z"}, "2312d"),
        ({"start": "yesterday"}, "RFC 3339"),
        ({"start": "2026-05-01T10:00:00"}, "UTC offset"),
        ({"start": "-0h"}, "duration"),
        ({"start": "-1h", "end": "-2h"}, "before end"),
        ({"start": "1500-01-01T00:00:00Z", "end": "1500-01-02T00:00:00Z"}, "1677"),
        ({"every": "5 minutes"}, "duration"),
        ({"every": "500ms"}, "minimum"),
        ({"agg": "mean"}, "agg needs every"),
        ({"every": "1m", "agg": "median"}, "agg"),
        ({"fields": "power_w,status"}, "status"),
        ({"fields": "Power"}, "value key"),
        ({"fields": 'power_w"); DROP DATABASE telemetry; --'}, "value key"),
        ({"fields": ",".join(f"f{i}" for i in range(65))}, "at most 64"),
    ],
)
async def test_bad_history_parameters_are_clear_422s_before_any_query(
    client: httpx.AsyncClient, fake: FakeInflux, params: dict[str, str], needle: str
) -> None:
    """Every unusable parameter is a 422 problem whose detail says what is wrong; no query runs."""
    body = _assert_problem(await _history(client, **params), 422)
    assert needle in body["detail"]
    assert fake.queries == []


async def test_downsampled_history_strips_wildcard_prefixes(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """every without agg means mean; mean(*) columns lose their prefix and seq is dropped."""
    series = Series(
        name="readings",
        columns=["time", "mean_energy_wh", "mean_power_w", "mean_seq"],
        values=[[TS_NS, 10.5, 3650, 5.5]],
    )
    fake.answers.append([series])
    resp = await _history(client, every="5m")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["agg"] == "mean"
    assert body["every"] == "5m"
    assert body["points"] == [
        {"ts": "2026-05-01T12:00:00.123Z", "values": {"energy_wh": 10.5, "power_w": 3650.0}}
    ]
    assert "SELECT mean(*) FROM" in fake.queries[0]
    assert "GROUP BY time(5m) fill(none)" in fake.queries[0]


async def test_downsampled_history_with_fields_keeps_their_names(
    client: httpx.AsyncClient, fake: FakeInflux
) -> None:
    """With fields, columns are aliased to the field names, even ones that start like agg_."""
    series = Series(name="readings", columns=["time", "max_power_w"], values=[[TS_NS, 7]])
    fake.answers.append([series])
    resp = await _history(client, every="1h", agg="max", fields="max_power_w")
    assert resp.json()["points"] == [
        {"ts": "2026-05-01T12:00:00.123Z", "values": {"max_power_w": 7.0}}
    ]
    assert 'max("max_power_w") AS "max_power_w"' in fake.queries[0]


# --- OpenAPI --------------------------------------------------------------------------------


async def test_openapi_documents_keys_problems_and_examples(client: httpx.AsyncClient) -> None:
    """/openapi.json names the X-API-Key scheme, problem+json errors and a reading example."""
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    latest = spec["paths"]["/v1/chargers/{charger_id}/latest"]["get"]
    for status in ("401", "403", "404", "422", "503"):
        assert MEDIA_TYPE in latest["responses"][status]["content"]
    example = spec["components"]["schemas"]["LatestReading"]["examples"][0]
    assert example["ts"].endswith("Z")
    assert (await client.get("/docs")).status_code == 200


# --- settings and entry point ---------------------------------------------------------------


def test_settings_refuse_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TELEMETRY_API_KEYS: a ConfigError naming the variable."""
    monkeypatch.delenv(env_name(ApiSettings, "keys"), raising=False)
    with pytest.raises(ConfigError) as info:
        ApiSettings()
    assert info.value.setting == env_name(ApiSettings, "keys")


def test_settings_read_keys_and_influx_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TELEMETRY_API_KEYS is JSON role -> key; nested InfluxDB settings use __."""
    env = env_for(
        ApiSettings,
        keys={"read": READ, "admin": ADMIN},
        influx={"url": "http://127.0.0.1:9999/", "token": "tok"},
        port=8123,
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ApiSettings()
    assert {r: k.get_secret_value() for r, k in settings.keys.items()} == {
        "read": READ,
        "admin": ADMIN,
    }
    assert settings.influx.url == "http://127.0.0.1:9999"
    assert settings.influx.token is not None
    assert settings.port == 8123
    assert READ not in repr(settings)


@pytest.mark.parametrize(
    "keys",
    [
        {"read": "same-key", "admin": "same-key"},
        {"read": ""},
        {"read": "has space"},
        {"reader": "k"},
    ],
)
def test_settings_refuse_unusable_keys(keys: dict[str, str]) -> None:
    """Shared, empty or blank keys and unknown roles are refused at start."""
    with pytest.raises(ValidationError):
        ApiSettings(keys=keys)


def test_main_exits_2_with_a_clear_message_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """telemetry-api without keys does not start: exit status 2 and the variable to set."""
    monkeypatch.delenv(env_name(ApiSettings, "keys"), raising=False)
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert env_name(ApiSettings, "keys") in capsys.readouterr().err


# --- time parameters (pure) -----------------------------------------------------------------


def test_parse_instant_forms() -> None:
    """now, -<duration> and RFC 3339 with any offset all become aware UTC datetimes."""
    assert parse_instant("now", NOW, "end") == NOW
    assert parse_instant("-90s", NOW, "start") == NOW - timedelta(seconds=90)
    assert parse_instant("-2w", NOW, "start") == NOW - timedelta(weeks=2)
    assert parse_instant("2026-05-01T14:00:00+02:00", NOW, "start") == datetime(
        2026, 5, 1, 12, tzinfo=UTC
    )
    assert parse_instant("2026-05-01T12:00:00.5Z", NOW, "start").microsecond == 500_000


@pytest.mark.parametrize("text", ["1h", "-1y", "-", "- 1h", "-01h", "", "2026-13-01T00:00:00Z"])
def test_parse_instant_refuses_other_forms(text: str) -> None:
    """Anything else is a TimeSpecError carrying the parameter name."""
    with pytest.raises(TimeSpecError) as info:
        parse_instant(text, NOW, "start")
    assert info.value.parameter == "start"


def test_resolve_window_caps_the_range_exactly() -> None:
    """A range of exactly max_range is allowed; one microsecond more is refused."""
    cap = timedelta(days=31)
    end = "2026-05-01T00:00:00Z"
    window = resolve_window(
        "2026-03-31T00:00:00Z", end, now=NOW, default_range=timedelta(hours=1), max_range=cap
    )
    assert window.end - window.start == cap
    with pytest.raises(TimeSpecError, match="exceeds"):
        resolve_window(
            "2026-03-30T23:59:59.999999Z",
            end,
            now=NOW,
            default_range=timedelta(hours=1),
            max_range=cap,
        )


def test_parse_duration_refuses_huge_values() -> None:
    """A duration too large for timedelta is a TimeSpecError, not a crash."""
    with pytest.raises(TimeSpecError):
        parse_duration("999999999w")


def test_default_limit_follows_the_cap() -> None:
    """Without history_default_limit the default is 1,000, or the cap when that is lower; an
    explicit default above the cap is refused."""
    assert _settings().default_limit == 1_000
    assert _settings(history_max_points=20).default_limit == 20
    assert _settings(history_default_limit=7).default_limit == 7
    with pytest.raises(ConfigError, match="HISTORY_DEFAULT_LIMIT"):
        _settings(history_max_points=20, history_default_limit=21)


# --- InfluxQL client request shape (transport stub: the request is what is pinned) ----------


async def _captured_request(settings: InfluxSettings) -> httpx.Request:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})

    async with InfluxQLClient(settings, transport=httpx.MockTransport(handler)) as client:
        assert await client.query("SHOW DATABASES") == []
    return seen[0]


async def test_client_sends_token_auth_when_a_token_is_set() -> None:
    """v2/v3 v1-compat: Authorization: Token <token>, db and epoch=ns on GET /query."""
    request = await _captured_request(
        InfluxSettings(url="http://influx.test/", database="telemetry", token=SecretStr("t0k"))
    )
    assert request.method == "GET"
    assert request.url.path == "/query"
    assert request.url.params["db"] == "telemetry"
    assert request.url.params["epoch"] == "ns"
    assert request.url.params["q"] == "SHOW DATABASES"
    assert request.headers["authorization"] == "Token t0k"


async def test_client_sends_basic_auth_for_a_v1_user() -> None:
    """v1: HTTP basic auth from username/password; nothing when neither is set."""
    request = await _captured_request(
        InfluxSettings(url="http://influx.test", username="u", password=SecretStr("p"))
    )
    assert request.headers["authorization"] == "Basic dTpw"
    request = await _captured_request(InfluxSettings(url="http://influx.test"))
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, b'{"error": "boom"}', InfluxUnavailable),
        (401, b'{"error": "authorization failed"}', InfluxUnavailable),
        (400, b'{"error": "error parsing query"}', InfluxQueryError),
        (200, b"not json", InfluxQueryError),
        (200, b'{"results": [{"statement_id": 0, "error": "shard gone"}]}', InfluxQueryError),
    ],
)
async def test_client_translates_error_answers(
    status: int, body: bytes, error: type[Exception]
) -> None:
    """5xx and credential failures mean unavailable; other refusals are query errors."""

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    settings = InfluxSettings(url="http://influx.test")
    async with InfluxQLClient(settings, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(error):
            await client.query("SHOW DATABASES")
