"""Unique ``ts`` per series: two captures of one charger, EVSE and connector never share a ts.

A reading's point in InfluxDB is keyed by its tags and its ts (milliseconds, as the payload
carries it), so two readings of one series with the same ts would become one point and one seq
would vanish unreported (OCPP's StopTransaction and the Transaction.End MeterValues commonly
share a timestamp). So a capture whose ts (to the millisecond) equals the last captured ts of
its series is given the last ts given in that series + 1 ms: a run T, T, T becomes T, T+1 ms,
T+2 ms, and a capture that falls inside such a run's span (T+1 ms here) is moved past it too.
A capture older than that is left alone (a late or back-dated reading keeps its time; it could
still meet an older reading's ts, which is not looked for).

Each series' mark (the ts it came with, the ts it was given) is kept in the outbox, written in
the transaction that stores the captures, so the rule holds across restarts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from edge_agent.capture import Capture

#: (charger_id, evse_id, connector_id)
SeriesKey = tuple[str, int, int]
#: Per series: (the ts its last capture came with, the ts it was given), ms since 1970.
Marks = dict[SeriesKey, tuple[int, int]]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


class UniqueTs:
    """The rule above over the marks the outbox holds (one instance per appender)."""

    def __init__(self, marks: Marks) -> None:
        self._marks = marks

    def apply(self, captures: Sequence[Capture]) -> tuple[list[Capture], Marks]:
        """``captures`` with their ts made unique per series, and the marks of the series they
        touched (to store with them)."""
        held = self._marks
        touched: Marks = {}
        out: list[Capture] = []
        last_ts, ms = None, 0
        for c in captures:
            ts = c.ts
            if ts is not last_ts:  # captures of one tick or message often share their ts
                if ts.tzinfo is None:  # not a valid capture: Capture.to_body refuses it
                    out.append(c)
                    continue
                last_ts, ms = ts, (ts - _EPOCH) // _MS
            key = (c.charger_id, c.evse_id, c.connector_id)
            mark = held.get(key)
            if mark is not None and mark[0] <= ms <= mark[1]:
                given = mark[1] + 1
                c = dataclasses.replace(c, ts=_EPOCH + given * _MS)
                mark = (mark[0], given)
            else:
                mark = (ms, ms)
            held[key] = touched[key] = mark
            out.append(c)
        return out, touched
