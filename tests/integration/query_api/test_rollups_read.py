"""History and stats served from the rollups, against a real InfluxDB 1.x.

One charger holds a year of 1-hour rollups, 40 days of 1-minute rollups and three days of raw
readings (written straight into their retention policies, as the rollup job stores them:
tests/support/rollups.py). The API must pick the store from the window and ``every``, say which
one it used, and derive exact aggregates from the buckets.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from query_api.app import create_app
from query_api.settings import ApiSettings
from telemetry_common.schema import format_ts
from telemetry_common.settings import InfluxSettings
from tests.support.fixtures import InfluxInfo
from tests.support.rollups import (
    EPOCH,
    Bucket,
    combined,
    create_rollup_policies,
    write_buckets,
    write_lines,
)

pytestmark = pytest.mark.integration

READ = "integration-read-key-rollups"
CHARGER = "gw-1-cp100"
#: A charger with 1-minute rollups for its last three hours only.
NEWCOMER = "gw-1-cp101"
KEYS = ("power_w", "energy_wh")
H, M = timedelta(hours=1), timedelta(minutes=1)


@dataclass(frozen=True)
class Seeded:
    url: str
    database: str
    hours: list[Bucket]
    minutes: list[Bucket]
    raw: list[tuple[datetime, int, float]]  # ts, seq, power_w


def _floor(ts: datetime, width: timedelta) -> datetime:
    return ts - (ts - EPOCH) % width


def _bucket(rng: random.Random, ts: datetime) -> Bucket:
    values = {}
    for key in KEYS:
        lo = round(rng.uniform(0, 5000), 3)
        hi = round(lo + rng.uniform(0, 3000), 3)
        values[key] = (round(rng.uniform(lo, hi), 6), lo, hi, round(rng.uniform(lo, hi), 3))
    count = rng.randint(1, 360)
    # energy_wh is in only some of a bucket's readings: aggregates weigh by its own count
    return Bucket(ts, values, count=count, counts={"energy_wh": rng.randint(1, count)})


def _influxql(url: str, statement: str) -> None:
    httpx.post(f"{url}/query", data={"q": statement}, timeout=10.0).raise_for_status()


@pytest.fixture(scope="module")
def seeded(influxd: InfluxInfo) -> Iterator[Seeded]:
    """The year of data, written once for the module's tests (its own database)."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    _influxql(influxd.url, f'CREATE DATABASE "{database}"')
    try:
        create_rollup_policies(influxd.url, database)
        rng = random.Random(18)
        now = datetime.now(UTC)
        top_h, top_m = _floor(now, H), _floor(now, M)
        hours = [_bucket(rng, top_h - i * H) for i in range(366 * 24, 0, -1)]
        minutes = [_bucket(rng, top_m - i * M) for i in range(40 * 1440, 0, -1)]
        raw = [
            (now - i * M, 3 * 1440 - i, round(rng.uniform(0, 7400), 3))
            for i in range(3 * 1440, 0, -1)
        ]
        write_buckets(influxd.url, database, "1h", CHARGER, hours)
        write_buckets(influxd.url, database, "1m", CHARGER, minutes)
        write_buckets(influxd.url, database, "1m", NEWCOMER, minutes[-180:])
        write_lines(
            influxd.url,
            database,
            [
                f"readings,charger_id={CHARGER},gateway_id=gw-1,evse_id=1,connector_id=1 "
                f'power_w={p!r},status="Charging",seq={seq}i '
                f"{(ts - EPOCH) // timedelta(microseconds=1) * 1000}"
                for ts, seq, p in raw
            ],
        )
        yield Seeded(influxd.url, database, hours, minutes, raw)
    finally:
        _influxql(influxd.url, f'DROP DATABASE "{database}"')


@pytest.fixture
async def api(seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(
        keys={"read": SecretStr(READ)},
        influx=InfluxSettings(url=seeded.url, database=seeded.database, timeout_s=30.0),
        history_max_points=10_000,
    )
    app = create_app(settings)
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


async def _all_pages(
    api: httpx.AsyncClient, params: dict[str, Any], resolution: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every page's body, every point) following next_cursor; each page says ``resolution``."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        resp = await api.get(
            f"/v1/chargers/{CHARGER}/history",
            params={**params, **({"cursor": cursor} if cursor else {})},
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Resolution"] == resolution
        body = resp.json()
        assert body["resolution"] == resolution
        pages.append(body)
        cursor = body.get("next_cursor")
        if cursor is None:
            return pages, [p for page in pages for p in page["points"]]
        assert len(pages) < 50, "paging does not end"


def _within(buckets: list[Bucket], body: dict[str, Any]) -> list[Bucket]:
    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    return [b for b in buckets if start <= b.ts < end]


def _assert_means(
    points: list[dict[str, Any]], buckets: list[Bucket], keys: tuple[str, ...]
) -> None:
    assert [p["ts"] for p in points] == [format_ts(b.ts) for b in buckets]
    for p, b in zip(points, buckets, strict=True):
        assert set(p["values"]) == set(keys)
        # one bucket, one connector: its mean exactly as stored
        assert p["values"] == {key: b.values[key][0] for key in keys}


async def test_a_year_of_history_is_served_from_the_1h_rollups_and_pages_through(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """start=-365d without every: 1-hour rollups (every=1h, agg=mean, every field of the
    rollup), paged 1,000 buckets at a time by cursor, every bucket exactly once and equal to
    what was written."""
    pages, points = await _all_pages(api, {"start": "-365d", "limit": 1000}, "1h")
    assert len(pages) == 9
    assert all(page["every"] == "1h" and page["agg"] == "mean" for page in pages)
    assert all(page["start"] == pages[0]["start"] for page in pages)
    expected = _within(seeded.hours, pages[0])
    assert abs(len(expected) - 365 * 24) <= 1  # the hour may turn between writing and reading
    _assert_means(points, expected, KEYS)


async def test_ten_days_of_history_come_from_the_1m_rollups(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """start=-10d: 1-minute rollups, one point per minute bucket, equal to what was written."""
    pages, points = await _all_pages(
        api, {"start": "-10d", "fields": "power_w", "limit": 10_000}, "1m"
    )
    assert len(pages) == 2
    expected = _within(seeded.minutes, pages[0])
    assert abs(len(expected) - 10 * 1440) <= 1
    _assert_means(points, expected, ("power_w",))


async def test_a_window_that_starts_long_before_a_chargers_data_pages_from_its_first_bucket(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """start=-10d of a charger with three hours of rollups: the first page holds them (not
    ten empty pages of 1,000 minutes to follow), and it is the last; an empty window answers
    one empty page without a cursor."""
    resp = await api.get(
        f"/v1/chargers/{NEWCOMER}/history", params={"start": "-10d", "limit": 1000}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resolution"] == "1m"
    assert body.get("next_cursor") is None
    expected = [b for b in seeded.minutes[-180:] if b.ts >= datetime.fromisoformat(body["start"])]
    _assert_means(body["points"], expected, KEYS)
    empty = await api.get(
        f"/v1/chargers/{NEWCOMER}/history", params={"start": "-10d", "end": "-5d"}
    )
    assert empty.status_code == 200, empty.text
    assert empty.json()["points"] == []
    assert empty.json().get("next_cursor") is None


async def test_six_hours_of_history_are_raw_readings(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """start=-6h: raw readings, with their seq and values as stored."""
    pages, points = await _all_pages(api, {"start": "-6h"}, "raw")
    start = datetime.fromisoformat(pages[0]["start"])
    expected = [(ts, seq, p) for ts, seq, p in seeded.raw if ts >= start]
    assert [(p["seq"], p["values"]["power_w"]) for p in points] == [
        (seq, p) for _, seq, p in expected
    ]
    assert "every" not in pages[0]


@pytest.mark.parametrize(
    ("every", "resolution"),
    [("30s", "raw"), ("90s", "raw"), ("5m", "1m"), ("1h", "1h"), ("1d", "1h")],
)
async def test_every_picks_the_coarsest_store_that_fits(
    api: httpx.AsyncClient, every: str, resolution: str
) -> None:
    """Over 10 days: every below 1 min (or not a multiple of it) reads raw readings, a multiple
    of 1 min the 1-minute rollups, a multiple of 1 h the 1-hour rollups."""
    resp = await api.get(
        f"/v1/chargers/{CHARGER}/history",
        params={"start": "-10d", "every": every, "fields": "power_w", "limit": 5},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Resolution"] == resolution
    assert resp.json()["every"] == every


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "count", "sum"])
async def test_daily_buckets_over_hour_rollups_are_exact_aggregates(
    api: httpx.AsyncClient, seeded: Seeded, agg: str
) -> None:
    """every=1d over 60 days from 1-hour rollups: each day is derived exactly from its 24
    buckets (count-weighted mean, min of mins, max of maxes, last of lasts, sum of counts)."""
    resp = await api.get(
        f"/v1/chargers/{CHARGER}/history",
        params={"start": "-60d", "every": "1d", "agg": agg, "fields": "power_w,energy_wh"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resolution"] == "1h"
    held = _within(seeded.hours, body)
    days: dict[datetime, list[Bucket]] = {}
    for b in held:
        days.setdefault(_floor(b.ts, timedelta(days=1)), []).append(b)
    assert [p["ts"] for p in body["points"]] == [format_ts(d) for d in sorted(days)]
    for point, day in zip(body["points"], sorted(days), strict=True):
        for key in ("power_w", "energy_wh"):
            assert point["values"][key] == pytest.approx(combined(days[day], key)[agg], rel=1e-12)


async def test_five_minute_buckets_over_minute_rollups_are_weighted_means(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """every=5m over 5 days from 1-minute rollups: each point the count-weighted mean of its
    five buckets (their counts differ)."""
    resp = await api.get(
        f"/v1/chargers/{CHARGER}/history",
        params={"start": "-5d", "every": "5m", "fields": "power_w", "limit": 10_000},
    )
    body = resp.json()
    assert body["resolution"] == "1m"
    groups: dict[datetime, list[Bucket]] = {}
    for b in _within(seeded.minutes, body):
        groups.setdefault(_floor(b.ts, 5 * M), []).append(b)
    got = {p["ts"]: p["values"]["power_w"] for p in body["points"]}
    assert list(got) == [format_ts(t) for t in sorted(groups)]
    for t, group in groups.items():
        assert got[format_ts(t)] == pytest.approx(combined(group, "power_w")["mean"], rel=1e-12)


async def test_stats_over_a_year_are_the_exact_aggregates_of_the_hour_rollups(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """stats start=-365d: from the 1-hour rollups; count, mean, min, max exact; median and
    stddev null (not derivable from rollups)."""
    resp = await api.get(f"/v1/chargers/{CHARGER}/stats", params={"start": "-365d"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Resolution"] == "1h"
    body = resp.json()
    assert body["resolution"] == "1h"
    held = _within(seeded.hours, body)
    assert abs(len(held) - 365 * 24) <= 1
    assert set(body["fields"]) == set(KEYS)
    for key in KEYS:
        want = combined(held, key)
        got = body["fields"][key]
        assert got["count"] == int(want["count"])
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
        assert (got["min"], got["max"]) == (want["min"], want["max"])
        assert got["median"] is None
        assert got["stddev"] is None


async def test_stats_within_the_raw_retention_stay_raw(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """stats over the last 2 days: raw readings (median and stddev given)."""
    resp = await api.get(
        f"/v1/chargers/{CHARGER}/stats", params={"start": "-2d", "fields": "power_w"}
    )
    body = resp.json()
    assert body["resolution"] == "raw"
    start = datetime.fromisoformat(body["start"])
    assert body["fields"]["power_w"]["count"] == sum(1 for ts, _, _ in seeded.raw if ts >= start)
    assert body["fields"]["power_w"]["median"] is not None


async def test_a_window_beyond_the_maximum_or_a_store_that_cannot_answer_is_refused(
    api: httpx.AsyncClient,
) -> None:
    """More than the 1-hour retention (1825 d) is a 422 naming the maximum; resolution=raw
    over 40 days and every=30s 40 days back are 422 invalid-resolution saying why."""
    for route in ("history", "stats"):
        resp = await api.get(f"/v1/chargers/{CHARGER}/{route}", params={"start": "-1826d"})
        assert resp.status_code == 422
        assert "exceeds the maximum of 1825d" in resp.json()["detail"]
    raw = await api.get(
        f"/v1/chargers/{CHARGER}/history", params={"start": "-40d", "resolution": "raw"}
    )
    assert raw.status_code == 422
    assert raw.json()["type"].endswith(":invalid-resolution")
    assert "raw readings are kept for 30d" in raw.json()["detail"]
    old = await api.get(
        f"/v1/chargers/{CHARGER}/history",
        params={"start": "-41d", "end": "-40d", "every": "30s"},
    )
    assert old.status_code == 422
    assert "use every=1m" in old.json()["detail"]


async def test_a_forced_resolution_is_used(api: httpx.AsyncClient, seeded: Seeded) -> None:
    """resolution=1h over the last 6 hours reads the hour rollups although raw would serve."""
    resp = await api.get(
        f"/v1/chargers/{CHARGER}/history",
        params={"start": "-6h", "resolution": "1h", "fields": "power_w"},
    )
    body = resp.json()
    assert body["resolution"] == "1h"
    _assert_means(body["points"], _within(seeded.hours, body), ("power_w",))


async def test_connectors_of_one_charger_are_weighted_by_their_counts(
    api: httpx.AsyncClient, seeded: Seeded
) -> None:
    """Two connectors in one hour (1 and 3 readings): the charger's mean is weighted 1:3, its
    count 4; a bucket without the field does not weigh."""
    charger = "gw-1-cp101"
    t = _floor(datetime.now(UTC), H) - 3 * H
    other = {"gateway_id": "gw-1", "evse_id": "1", "connector_id": "2"}
    buckets = [
        Bucket(t, {"power_w": (10.0, 5.0, 20.0, 12.0)}, count=1),
        Bucket(t, {"power_w": (30.0, 25.0, 35.0, 31.0)}, count=3, tags=other),
        Bucket(t, {}, count=7, tags={**other, "evse_id": "2"}),
    ]
    write_buckets(seeded.url, seeded.database, "1h", charger, buckets)
    params = {"start": "-6h", "resolution": "1h", "fields": "power_w"}
    history = (await api.get(f"/v1/chargers/{charger}/history", params=params)).json()
    assert [p["values"] for p in history["points"]] == [{"power_w": 25.0}]
    stats = (await api.get(f"/v1/chargers/{charger}/stats", params=params)).json()
    assert stats["fields"]["power_w"] == {
        "count": 4, "mean": 25.0, "median": None, "stddev": None, "min": 5.0, "max": 35.0,
    }  # fmt: skip
