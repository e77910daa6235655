"""Reading the rollups: the value keys a rollup measurement holds (asked of InfluxDB and reused
for a while), and rollup rows combined into a history page's buckets.

A history or stats query over rollups names its fields (InfluxDB cannot weigh ``{key}_mean`` by
``count`` under a wildcard); without ``fields`` the rollup's value keys are asked with one
``SHOW FIELD KEYS``, kept ``ttl_s`` (keys are added as chargers send new ones, never renamed).
"""

from __future__ import annotations

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
    columns: list[str], rows: list[list[Any]], keys: list[str], agg: Aggregate, step_ns: int
) -> list[tuple[int, dict[str, float]]]:
    """Rollup rows (oldest first, as InfluxDB answers them: ``time`` in ns, the column ``agg``
    reads per key, and for ``mean``/``sum`` the key's count ``{key}_count``) combined into
    buckets of ``step_ns`` (epoch-aligned, a multiple of the rollup's width): (bucket start,
    values), buckets without any value left out. Exact: ``mean`` weighs each row's mean by the
    number of readings that carried the key (a bucket of one row: its mean as stored), ``sum`` =
    the sum of mean * that count, ``count`` = the sum of the key's counts, ``min``/``max`` of
    the rows' mins/maxes, ``last`` the newest row's last."""
    column = ROLLUP_COLUMN[agg]
    at = {name: i for i, name in enumerate(columns)}
    ti = at["time"]
    idx = [(k, at[f"{k}_{column}"], at.get(f"{k}_count")) for k in keys if f"{k}_{column}" in at]
    out: list[tuple[int, dict[str, float]]] = []
    i, n = 0, len(rows)
    while i < n:
        t = rows[i][ti]
        bucket = t - t % step_ns
        j = i + 1
        while j < n and rows[j][ti] - bucket < step_ns:
            j += 1
        if j == i + 1 and agg in ("mean", "min", "max", "last"):  # one row: as stored
            row = rows[i]
            values = {
                k: float(v)
                for k, x, _ in idx
                if isinstance(v := row[x], int | float) and v is not True
            }
        else:
            values = _fold(rows[i:j], idx, agg)
        if values:
            out.append((bucket, values))
        i = j
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fold(
    group: list[list[Any]], idx: list[tuple[str, int, int | None]], agg: str
) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, x, ci in idx:
        held = [(float(r[x]), _count(r, ci)) for r in group if _is_number(r[x])]
        if not held:
            continue
        if agg == "mean":
            total = sum(c for _, c in held)
            values[key] = held[0][0] if len(held) == 1 else sum(v * c for v, c in held) / total
        elif agg == "sum":
            values[key] = sum(v * c for v, c in held)
        elif agg == "count":  # the column read is the key's count itself
            values[key] = sum(v for v, _ in held)
        elif agg == "min":
            values[key] = min(v for v, _ in held)
        elif agg == "max":
            values[key] = max(v for v, _ in held)
        else:  # last: the newest row's (rows are oldest first)
            values[key] = held[-1][0]
    return values


def _count(row: list[Any], ci: int | None) -> float:
    value: Any = row[ci] if ci is not None else None
    return float(value) if _is_number(value) else 0.0
