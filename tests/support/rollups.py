"""Rollup points written straight into InfluxDB 1.x, as the rollup job stores them
(docs/design.md#rollups), for tests of the read side: the retention policies, one bucket as
line protocol, and the aggregates a reader must find in them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from telemetry_common.storage import (
    ROLLUP_1H_MEASUREMENT,
    ROLLUP_1H_RP,
    ROLLUP_1M_MEASUREMENT,
    ROLLUP_1M_RP,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: resolution -> (retention policy, measurement, default duration of the policy)
ROLLUPS = {
    "1m": (ROLLUP_1M_RP, ROLLUP_1M_MEASUREMENT, "365d"),
    "1h": (ROLLUP_1H_RP, ROLLUP_1H_MEASUREMENT, "1825d"),
}


@dataclass(frozen=True)
class Bucket:
    """One rollup point: per value key its mean, min, max and last; the raw count; per key
    the readings that carried it (``counts``; a key left out: all ``count`` of them)."""

    ts: datetime
    values: dict[str, tuple[float, float, float, float]]
    count: int
    status_last: str = "Charging"
    tags: dict[str, str] = field(
        default_factory=lambda: {"gateway_id": "gw-1", "evse_id": "1", "connector_id": "1"}
    )
    counts: dict[str, int] = field(default_factory=dict)

    def count_of(self, key: str) -> int:
        return self.counts.get(key, self.count)

    def line(self, measurement: str, charger_id: str) -> str:
        tags = ",".join(f"{k}={v}" for k, v in {"charger_id": charger_id, **self.tags}.items())
        fields = [
            f"{key}_{stat}={value!r}"
            for key, stats in self.values.items()
            for stat, value in zip(("mean", "min", "max", "last"), stats, strict=True)
        ]
        fields += [f"{key}_count={self.count_of(key)}i" for key in self.values]
        fields += [f"count={self.count}i", f'status_last="{self.status_last}"']
        ns = (self.ts - EPOCH) // timedelta(microseconds=1) * 1000
        return f"{measurement},{tags} {','.join(fields)} {ns}"


def create_rollup_policies(url: str, database: str) -> None:
    """The rollup job's retention policies on ``database`` (default durations)."""
    for rp, _, duration in ROLLUPS.values():
        statement = (
            f'CREATE RETENTION POLICY "{rp}" ON "{database}" DURATION {duration} REPLICATION 1'
        )
        resp = httpx.post(f"{url}/query", data={"q": statement}, timeout=10.0)
        resp.raise_for_status()
        assert "error" not in resp.text, resp.text


def write_lines(url: str, database: str, lines: Sequence[str], rp: str | None = None) -> None:
    """Line protocol (ns precision) into ``database`` (``rp``: a retention policy), in chunks."""
    params = {"db": database, "precision": "ns", **({"rp": rp} if rp else {})}
    with httpx.Client(base_url=url, timeout=60.0) as http:
        for i in range(0, len(lines), 5000):
            resp = http.post("/write", params=params, content="\n".join(lines[i : i + 5000]))
            assert resp.status_code == 204, resp.text


def write_buckets(
    url: str, database: str, resolution: str, charger_id: str, buckets: Iterable[Bucket]
) -> None:
    rp, measurement, _ = ROLLUPS[resolution]
    write_lines(url, database, [b.line(measurement, charger_id) for b in buckets], rp=rp)


def combined(buckets: Sequence[Bucket], key: str) -> dict[str, float]:
    """What a reader must derive from ``buckets`` for ``key``: the mean weighted by the key's
    counts, min of mins, max of maxes, the newest last, the sum of the key's counts and the sum
    (mean * the key's count)."""
    held = [b for b in buckets if key in b.values]
    n = sum(b.count_of(key) for b in held)
    total = sum(b.values[key][0] * b.count_of(key) for b in held)
    newest = max(held, key=lambda b: b.ts)
    return {
        "count": float(n),
        "sum": total,
        "mean": total / n,
        "min": min(b.values[key][1] for b in held),
        "max": max(b.values[key][2] for b in held),
        "last": newest.values[key][3],
    }


def rollups_of(
    readings: Iterable[tuple[str, str, datetime, str, dict[str, float]]], width: timedelta
) -> list[tuple[str, Bucket]]:
    """(charger, bucket) of ``width`` computed from readings (charger, gateway, ts, status,
    values; connector 1 of EVSE 1) as the rollup job's contract defines them: a stand-in for
    the job where a test needs rollups of data it published."""
    groups: dict[tuple[str, str, datetime], list[tuple[datetime, str, dict[str, float]]]] = {}
    for charger, gateway, ts, status, values in readings:
        start = ts - (ts - EPOCH) % width
        groups.setdefault((charger, gateway, start), []).append((ts, status, values))
    out = []
    for (charger, gateway, start), group in sorted(groups.items()):
        group.sort(key=lambda g: g[0])
        keys = sorted({k for _, _, values in group for k in values})
        stats, counts = {}, {}
        for key in keys:
            xs = [values[key] for _, _, values in group if key in values]
            stats[key] = (sum(xs) / len(xs), min(xs), max(xs), xs[-1])
            counts[key] = len(xs)
        tags = {"gateway_id": gateway, "evse_id": "1", "connector_id": "1"}
        out.append((charger, Bucket(start, stats, len(group), group[-1][1], tags, counts)))
    return out


def write_rollups(
    url: str, database: str, resolution: str, buckets: Iterable[tuple[str, Bucket]]
) -> None:
    """(charger, bucket) pairs into the rollup of ``resolution``."""
    rp, measurement, _ = ROLLUPS[resolution]
    write_lines(url, database, [b.line(measurement, c) for c, b in buckets], rp=rp)
