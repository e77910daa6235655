"""Which acknowledged readings of an ingest request InfluxDB does not hold (dead-lettered).

A stored acknowledgement says every seq is *handled*: stored, or dead-lettered (ts too old, a
charger bound to another gateway...). The API cannot read the dead-letter feed (its ACL), so
right after the acknowledgement it asks InfluxDB how many points of the gateway carry the
request's seqs within the readings' time range: one count query (``count_seq_range_query``, the
one the bridge's gap checks use) when all are there, the common case. When some are missing,
the range is halved until each missing seq is found, at most ``MAX_QUERIES`` queries in all;
beyond that only the count is known.

A reading not found with its seq was dead-lettered, or replaced by a later reading of the same
charger, connector and ts (the point's key), e.g. the same reading twice in one request.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_common.influx_query import InfluxError, InfluxQL
from telemetry_common.influxql import count_seq_range_query
from telemetry_common.schema import Reading

#: Most count queries one request costs (a request with many dead letters reports only counts).
MAX_QUERIES = 16


@dataclass(frozen=True, slots=True)
class Handled:
    stored: int | None  # readings InfluxDB holds with their seq; None: InfluxDB did not answer
    not_stored: list[int] | None  # their indices in the request; None: not known


async def handled(influx: InfluxQL, gateway_id: str, readings: list[Reading]) -> Handled:
    """``readings`` (numbered consecutively) checked against InfluxDB."""
    first = readings[0].seq

    async def count(lo: int, hi: int) -> int:
        part = readings[lo - first : hi - first + 1]
        start, end = min(r.ts for r in part), max(r.ts for r in part)
        series = await influx.query(count_seq_range_query(gateway_id, lo, hi, start, end))
        return int(series[0].values[0][1]) if series and series[0].values else 0

    try:
        total = await count(first, readings[-1].seq)
        if total == len(readings):
            return Handled(total, [])
        missing: list[int] = []
        todo = [(first, readings[-1].seq, total)]
        queries = 1
        while todo:
            lo, hi, n = todo.pop()
            if n == 0:
                missing.extend(range(lo, hi + 1))
                continue
            if n == hi - lo + 1:
                continue
            if queries >= MAX_QUERIES:
                return Handled(total, None)
            mid = (lo + hi) // 2
            low = await count(lo, mid)
            queries += 1
            todo += [(mid + 1, hi, n - low), (lo, mid, low)]
    except InfluxError:
        return Handled(None, None)
    return Handled(total, sorted(seq - first for seq in missing))
