"""The processor's state against InfluxDB: warmed from it at start, gaps confirmed against it.

InfluxDB holds what every bridge of the share group stored, so it is the record: the last-value
cache, the first-come bindings and each gateway's highest seq are seeded from it, and a
suspected seq gap is reported as missing only when no bridge stored those readings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

from processor.state import State
from processor.state.lvc import Stamp
from telemetry_common.influx_query import InfluxQL, InfluxUnavailable, Series
from telemetry_common.influxql import (
    count_seq_range_query,
    highest_seq_per_gateway_query,
    newest_per_charger_query,
)

log = logging.getLogger(__name__)


async def _query_with_retry(client: InfluxQL, q: str, max_backoff_s: float) -> list[Series]:
    delay = 0.5
    while True:
        try:
            return await client.query(q)
        except InfluxUnavailable as exc:
            log.warning("InfluxDB not available (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


async def warm_up(state: State, client: InfluxQL, max_backoff_s: float) -> None:
    """Seed the last-value cache, the bindings and gap tracking from what InfluxDB holds."""
    series = await _query_with_retry(client, newest_per_charger_query(), max_backoff_s)
    newest: dict[str, Stamp] = {}
    for s in series:
        charger, gateway = s.tags.get("charger_id"), s.tags.get("gateway_id")
        if not charger or not gateway:
            continue
        for row in s.rows():
            stamp = Stamp(int(row["time"]), int(row["seq"]), gateway)
            held = newest.get(charger)
            if held is None or (held.ts_ns, held.seq) < (stamp.ts_ns, stamp.seq):
                newest[charger] = stamp
    for charger, stamp in newest.items():
        state.lvc.offer(charger, stamp)
        state.bindings.seed(charger, stamp.gateway_id)
    highs = await _query_with_retry(client, highest_seq_per_gateway_query(), max_backoff_s)
    for s in highs:
        gateway = s.tags.get("gateway_id")
        for row in s.rows() if gateway else []:
            state.gaps.seed(str(gateway), int(row["seq"]), int(row["time"]))
    log.info("warm-up: %d chargers, %d gateways known from InfluxDB", len(newest), len(highs))


async def confirm_gaps_forever(state: State, client: InfluxQL, grace_s: float) -> None:
    """Confirm suspected seq gaps against InfluxDB, forever (a task of the processor)."""

    async def count_stored(gw: str, first: int, last: int, lo: datetime, hi: datetime) -> int:
        series = await client.query(count_seq_range_query(gw, first, last, lo, hi))
        return int(series[0].values[0][1]) if series and series[0].values else 0

    reported = 0
    gaps = state.gaps
    while True:
        await asyncio.sleep(min(grace_s, 10.0))
        try:
            await gaps.confirm(count_stored, time.monotonic(), grace_s)
        except InfluxUnavailable as exc:
            log.warning("gap check postponed: %s", exc)
            continue
        missing = gaps.missing()
        if missing != reported:
            log.warning(
                "seq gaps: %d readings missing (in no bridge's store): %s", missing, gaps.report()
            )
            reported = missing
