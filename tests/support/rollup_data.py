"""Generated raw readings for the rollup tests, written straight to InfluxDB, and the
aggregates expected of them, computed here in plain Python (independently of the job and of
InfluxQL): per bucket and series, ``count``, ``status_last`` and ``{key}_mean/_min/_max/_last``."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Rollup points (or expected aggregates) by (charger, gateway, evse, connector, bucket ns).
Points = dict[tuple[Any, ...], dict[str, Any]]
STATUSES = ("Available", "Charging", "SuspendedEV", "Finishing")
#: (charger_id, gateway_id, evse_id, connector_id)
SERIES = (
    ("cp-a", "gw-1", "1", "1"),
    ("cp-a", "gw-1", "1", "2"),
    ("cp-b", "gw-1", "1", "1"),
    ("cp-c", "gw-2", "0", "0"),
)


@dataclass(frozen=True)
class Raw:
    series: tuple[str, str, str, str]
    ts: datetime
    seq: int
    status: str | None
    values: dict[str, float] = field(default_factory=dict)


def ns(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1) * 1000


def generate(
    start: datetime,
    end: datetime,
    *,
    every: timedelta = timedelta(minutes=7),
    burst_hour: int = 12,
    burst_every: timedelta = timedelta(seconds=20),
    series: Iterable[tuple[str, str, str, str]] = SERIES,
    seed: int = 18,
) -> list[Raw]:
    """Readings of each series in ``[start, end)``: one every ``every`` (with jitter), and one
    every ``burst_every`` during hour ``burst_hour`` of each day (several per minute). ``soc_pct``
    is in about half of them (a sparse key), ``status`` in most."""
    rng = random.Random(seed)
    out: list[Raw] = []
    for s in series:
        t, seq, energy = start, 0, rng.uniform(0, 1e5)
        while t < end:
            step = burst_every if t.hour == burst_hour else every
            seq += 1
            energy += rng.uniform(0, 500)
            values = {
                "power_w": round(rng.uniform(0, 22_000), 3),
                "voltage_v": round(rng.gauss(230, 3), 3),
                "energy_wh": round(energy, 3),
            }
            if rng.random() < 0.5:
                values["soc_pct"] = round(rng.uniform(0, 100), 2)
            status = rng.choice(STATUSES) if rng.random() < 0.9 else None
            out.append(Raw(s, t, seq, status, values))
            t += step + timedelta(milliseconds=rng.randrange(0, 900))
    return out


def lines(readings: Iterable[Raw]) -> Iterator[str]:
    for r in readings:
        c, g, e, k = r.series
        fields = [f"{key}={value!r}" for key, value in sorted(r.values.items())]
        fields.append(f"seq={r.seq}i")
        if r.status is not None:
            fields.append(f'status="{r.status}"')
        yield (
            f"readings,charger_id={c},connector_id={k},evse_id={e},gateway_id={g} "
            f"{','.join(fields)} {ns(r.ts)}"
        )


def write(url: str, database: str, readings: list[Raw], batch: int = 5000) -> None:
    text = list(lines(readings))
    for i in range(0, len(text), batch):
        r = httpx.post(
            f"{url}/write",
            params={"db": database, "precision": "ns"},
            content="\n".join(text[i : i + batch]).encode(),
            timeout=60,
        )
        assert r.status_code == 204, r.text


def expected(readings: Iterable[Raw], every: timedelta) -> Points:
    """Per (series..., bucket start in ns): the aggregates the rollups must hold."""
    groups: dict[tuple[Any, ...], list[Raw]] = defaultdict(list)
    for r in readings:
        bucket = EPOCH + ((r.ts - EPOCH) // every) * every
        groups[(*r.series, ns(bucket))].append(r)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for key, rows in groups.items():
        rows.sort(key=lambda r: r.ts)
        agg: dict[str, Any] = {"count": len(rows)}
        statuses = [r.status for r in rows if r.status is not None]
        if statuses:
            agg["status_last"] = statuses[-1]
        for name in sorted({k for r in rows for k in r.values}):
            vals = [r.values[name] for r in rows if name in r.values]
            agg[f"{name}_mean"] = math.fsum(vals) / len(vals)
            agg[f"{name}_min"] = min(vals)
            agg[f"{name}_max"] = max(vals)
            agg[f"{name}_last"] = vals[-1]
            agg[f"{name}_count"] = len(vals)
        out[key] = agg
    return out


def stored(url: str, database: str, rp: str, measurement: str) -> Points:
    """Every point of a rollup measurement, keyed as :func:`expected` (null fields left out)."""
    r = httpx.get(
        f"{url}/query",
        params={
            "db": database,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": "10000",
            "q": f'SELECT * FROM "{database}"."{rp}"."{measurement}" GROUP BY *',
        },
        timeout=120,
    )
    r.raise_for_status()
    out: Points = {}
    for line in r.text.splitlines():
        if not line.strip():
            continue
        for result in orjson.loads(line)["results"]:
            assert "error" not in result, result
            for s in result.get("series", ()):
                t = s["tags"]
                series = (t["charger_id"], t["gateway_id"], t["evse_id"], t["connector_id"])
                for row in s["values"]:
                    point = {c: v for c, v in zip(s["columns"], row, strict=True) if v is not None}
                    out[(*series, point.pop("time"))] = point
    return out


def assert_matches(got: Points, want: Points) -> None:
    """Same buckets, same fields, equal values (floats within 1e-9 relative)."""
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    assert not missing, f"missing buckets {missing}"
    assert not extra, f"unexpected buckets {extra}"
    for key, agg in want.items():
        point = got[key]
        assert set(point) == set(agg), (key, sorted(point), sorted(agg))
        for name, value in agg.items():
            if isinstance(value, float):
                assert math.isclose(point[name], value, rel_tol=1e-9, abs_tol=1e-9), (
                    key,
                    name,
                    point[name],
                    value,
                )
            else:
                assert point[name] == value, (key, name, point[name], value)
