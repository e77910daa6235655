"""The newest-stored state (docs/design.md#newest-stored-state): what start-up and the API's
sweeps need of all history, kept small by the bridges.

Each bridge writes, with every batch it commits and before the batch is acknowledged, one point
per charger whose newest stored reading the batch advanced (``newest_chargers``) and one per
gateway epoch whose newest reading or highest seq it advanced (``newest_gateways``), in
retention policy ``keep`` at the fixed time ``NEWEST_STATE_TS``: a write overwrites the point of
its series, so the state holds one point per (charger or gateway epoch, bridge) whatever the
history. Bridges of one share group commit a charger's batches interleaved, so each writes its
own series (tag ``bridge``) and a reader takes the newest over bridges: no bridge's point can
move another's backwards. Only what InfluxDB stored is written (after the readings' write).

This module reads and writes the points; the processor (:mod:`processor.state.newest`) decides
what advanced, the warm-up and the API read them back (plus a recent window of raw points).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from telemetry_common import influxql
from telemetry_common.influx_query import InfluxError, InfluxQL, Series
from telemetry_common.influx_write import field_str, tag_str
from telemetry_common.storage import (
    NEWEST_CHARGER_MEASUREMENT,
    NEWEST_GATEWAY_MEASUREMENT,
    NEWEST_STATE_TS,
)


@dataclass(frozen=True, slots=True)
class ChargerMark:
    """A charger's newest stored reading: its ts (ns), seq and gateway."""

    ts_ns: int
    seq: int
    gateway_id: str

    @property
    def order(self) -> tuple[int, int]:
        return self.ts_ns, self.seq


@dataclass(frozen=True, slots=True)
class GatewayMark:
    """Of one gateway epoch: the ts of its newest stored reading (by time), its highest stored
    seq and that reading's ts (ns)."""

    newest_ts: int
    high: int
    high_ts: int

    def merged(self, other: GatewayMark | None) -> GatewayMark:
        """The newest of both and the highest of both."""
        if other is None:
            return self
        high = self if (self.high, self.high_ts) >= (other.high, other.high_ts) else other
        return GatewayMark(max(self.newest_ts, other.newest_ts), high.high, high.high_ts)


#: (gateway_id, epoch or None)
GatewayKey = tuple[str, str | None]


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def charger_marks(series: Iterable[Series]) -> dict[str, ChargerMark]:
    """Per charger, the newest mark over every bridge's point (an answer of
    :func:`~telemetry_common.influxql.newest_chargers_state_query`)."""
    out: dict[str, ChargerMark] = {}
    for s in series:
        for row in s.rows():
            charger, gateway = row.get("charger_id"), row.get("gateway_id")
            ts, seq = _int(row.get("ts")), _int(row.get("seq"))
            if not charger or not gateway or ts is None or seq is None:
                continue
            offer_charger(out, str(charger), ChargerMark(ts, seq, str(gateway)))
    return out


def offer_charger(marks: dict[str, ChargerMark], charger_id: str, mark: ChargerMark) -> bool:
    """Keep ``mark`` if it is newer than the charger's; True if kept."""
    held = marks.get(charger_id)
    if held is not None and held.order >= mark.order:
        return False
    marks[charger_id] = mark
    return True


def gateway_marks(series: Iterable[Series]) -> dict[GatewayKey, GatewayMark]:
    """Per gateway epoch, every bridge's points merged (an answer of
    :func:`~telemetry_common.influxql.newest_gateways_state_query`)."""
    out: dict[GatewayKey, GatewayMark] = {}
    for s in series:
        for row in s.rows():
            gateway = row.get("gateway_id")
            newest, high, high_ts = (_int(row.get(k)) for k in ("newest_ts", "high", "high_ts"))
            if not gateway or newest is None or high is None or high_ts is None:
                continue
            key = (str(gateway), str(row["epoch"]) if row.get("epoch") else None)
            out[key] = GatewayMark(newest, high, high_ts).merged(out.get(key))
    return out


def current_epochs(
    marks: dict[GatewayKey, GatewayMark],
) -> dict[str, tuple[str | None, GatewayMark]]:
    """Per gateway, the epoch of its newest reading by time (the one it sends with now) and its
    mark."""
    out: dict[str, tuple[str | None, GatewayMark]] = {}
    for (gateway, epoch), mark in marks.items():
        held = out.get(gateway)
        if held is None or held[1].newest_ts < mark.newest_ts:
            out[gateway] = (epoch, mark)
    return out


def charger_line(bridge: str, charger_id: str, mark: ChargerMark) -> str:
    return (
        f"{NEWEST_CHARGER_MEASUREMENT},bridge={tag_str(bridge)},charger_id={tag_str(charger_id)} "
        f"ts={mark.ts_ns}i,seq={mark.seq}i,gateway_id={field_str(mark.gateway_id)} "
        f"{NEWEST_STATE_TS}"
    )


def gateway_line(bridge: str, key: GatewayKey, mark: GatewayMark) -> str:
    gateway, epoch = key
    tags = f"bridge={tag_str(bridge)}"
    if epoch is not None:
        tags += f",epoch={tag_str(epoch)}"
    return (
        f"{NEWEST_GATEWAY_MEASUREMENT},{tags},gateway_id={tag_str(gateway)} "
        f"newest_ts={mark.newest_ts}i,high={mark.high}i,high_ts={mark.high_ts}i "
        f"{NEWEST_STATE_TS}"
    )


#: Readers add the raw points of this last window to the state (what a bridge stored but whose
#: state point it did not write yet: it crashed in between, and the batch is delivered again).
RECENT_WINDOW: Final = timedelta(hours=1)


def _absent(exc: InfluxError) -> bool:
    """The state's retention policy does not exist yet: nothing was written (an empty state)."""
    return "retention policy not found" in str(exc)


def charger_rows(series: Iterable[Series]) -> dict[str, ChargerMark]:
    """Per charger, its newest point in an answer of
    :func:`~telemetry_common.influxql.newest_per_charger_query` (one series per charger and
    gateway)."""
    newest: dict[str, ChargerMark] = {}
    for s in series:
        charger, gateway = s.tags.get("charger_id"), s.tags.get("gateway_id")
        if not charger or not gateway:
            continue
        for row in s.rows():
            offer_charger(newest, charger, ChargerMark(int(row["time"]), int(row["seq"]), gateway))
    return newest


async def newest_chargers(
    influx: InfluxQL, window: timedelta = RECENT_WINDOW
) -> dict[str, ChargerMark]:
    """Per charger, its newest stored reading: the state, and the raw points of the last
    ``window`` (two queries bounded by chargers x bridges and by the window, whatever the
    history). A charger whose newest reading is older than the window and that no bridge wrote
    state for (a database written by a version without it, until a bridge has read the older
    history back) is missing."""
    try:
        marks = charger_marks(await influx.query_chunked(influxql.newest_chargers_state_query()))
    except InfluxError as exc:
        if not _absent(exc):
            raise
        marks = {}
    since = datetime.now(UTC) - window
    recent = await influx.query_chunked(influxql.newest_per_charger_query(since))
    for charger, mark in charger_rows(recent).items():
        offer_charger(marks, charger, mark)
    return marks


async def gateway_highest_seq(
    influx: InfluxQL, gateway_id: str, window: timedelta = RECENT_WINDOW
) -> int | None:
    """The highest seq stored of ``gateway_id`` (over its epochs): the state's and the last
    ``window``'s; None when neither knows the gateway."""
    highs: list[int] = []
    try:
        for key, mark in gateway_marks(
            await influx.query(influxql.gateway_state_query(gateway_id))
        ).items():
            if key[0] == gateway_id:
                highs.append(mark.high)
    except InfluxError as exc:
        if not _absent(exc):
            raise
    since = datetime.now(UTC) - window
    for s in await influx.query(influxql.gateway_highest_seq_query(gateway_id, since)):
        highs.extend(int(r["seq"]) for r in s.rows() if r.get("seq") is not None)
    return max(highs, default=None)
