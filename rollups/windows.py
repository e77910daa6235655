"""Bucket arithmetic of the rollup job: aligned times, chunks, batches. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def floor(ts: datetime, step: timedelta) -> datetime:
    """``ts`` rounded down to a multiple of ``step`` since the Unix epoch (InfluxDB's buckets)."""
    return _EPOCH + ((ts - _EPOCH) // step) * step


def ceil(ts: datetime, step: timedelta) -> datetime:
    down = floor(ts, step)
    return down if down == ts else down + step


def from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def to_ns(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


def chunks(start: datetime, end: datetime, size: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` cut into pieces of at most ``size``; after the first, each piece starts
    on a whole hour (for ``size`` of an hour or more), so the hours inside a piece are whole."""
    a = start
    while a < end:
        b = min(end, floor(a, HOUR) + size)
        if b <= a:
            b = min(end, a + size)
        yield a, b
        a = b


def steps(
    start: datetime, end: datetime, every: timedelta, rows_per_bucket: int, max_rows: int
) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` (multiples of ``every``) in steps of whole buckets such that
    ``buckets x rows_per_bucket`` stays within ``max_rows`` (at least one bucket a step)."""
    n = max(1, max_rows // max(1, rows_per_bucket))
    a = start
    while a < end:
        b = min(end, a + n * every)
        yield a, b
        a = b


def batches(series_per_charger: Mapping[str, int], max_chargers: int) -> Iterator[list[str]]:
    """Chargers in batches of at most ``max_chargers`` (sorted, so queries are reproducible)."""
    ids = sorted(series_per_charger)
    for i in range(0, len(ids), max_chargers):
        yield ids[i : i + max_chargers]
