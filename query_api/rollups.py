"""Reading the rollups: the value keys a rollup measurement holds (asked of InfluxDB and reused
for a while), and rollup rows combined into a history page's buckets.

A history or stats query over rollups names its fields (InfluxDB cannot weigh ``{key}_mean`` by
``count`` under a wildcard); without ``fields`` the rollup's value keys are asked with one
``SHOW FIELD KEYS``, kept ``ttl_s`` (keys are added as chargers send new ones, never renamed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.influxql import ROLLUP_COLUMN, Aggregate, Rollup


class RollupFields:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._held: dict[str, tuple[float, list[str]]] = {}

    async def get(self, influx: InfluxQL, rollup: Rollup, mono: float) -> list[str]:
        """The value keys of ``rollup`` (sorted; empty when it holds none yet)."""
        held = self._held.get(rollup)
        if held is not None and mono - held[0] < self.ttl_s:
            return held[1]
        series = await influx.query(influxql.rollup_fields_query(rollup))
        keys = influxql.rollup_value_keys(row.get("fieldKey") for s in series for row in s.rows())
        self._held[rollup] = (mono, keys)
        return keys


def combine(
    rows: Iterable[dict[str, Any]], keys: list[str], agg: Aggregate, step_ns: int
) -> list[tuple[int, dict[str, float]]]:
    """Rollup rows (oldest first; ``time`` in ns, the column ``agg`` reads per key, ``count``)
    combined into buckets of ``step_ns`` (epoch-aligned, a multiple of the rollup's width):
    (bucket start, values), buckets without any value left out. Exact: ``mean`` weighs each
    row's mean by its count (one row: its mean as stored), ``sum`` = the sum of mean * count,
    ``count`` = the sum of counts, ``min``/``max`` of the rows' mins/maxes, ``last`` the
    newest row's last."""
    column = ROLLUP_COLUMN[agg]
    names = [(k, f"{k}_{column}") for k in keys]
    out: list[tuple[int, dict[str, float]]] = []
    t_bucket: int | None = None
    acc: dict[str, list[float]] = {}

    def flush() -> None:
        if t_bucket is not None and acc:
            out.append((t_bucket, {k: _result(agg, v) for k, v in acc.items()}))

    for row in rows:
        t = int(row["time"])
        t -= t % step_ns
        if t != t_bucket:
            flush()
            t_bucket, acc = t, {}
        count: Any = row.get("count")
        n = float(count) if _is_number(count) else 0.0
        for key, name in names:
            v: Any = row.get(name)
            if not _is_number(v):
                continue
            held = acc.get(key)
            if held is None:
                acc[key] = [float(v), n, float(v) * n, 1.0]  # value, sum n, sum v*n, rows
            else:
                _fold(agg, held, float(v), n)
    flush()
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fold(agg: str, held: list[float], v: float, n: float) -> None:
    if agg == "min":
        held[0] = min(held[0], v)
    elif agg == "max":
        held[0] = max(held[0], v)
    elif agg == "last":
        held[0] = v
    held[1] += n
    held[2] += v * n
    held[3] += 1


def _result(agg: str, held: list[float]) -> float:
    value, n, weighted, rows = held
    if agg == "mean":
        return value if rows == 1 else weighted / n
    if agg == "sum":
        return weighted
    if agg == "count":
        return n
    return value
