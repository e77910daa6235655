"""The processor's state against InfluxDB: warmed from it at start, gaps confirmed against it.

InfluxDB holds what every bridge of the share group stored, so it is the record: the last-value
cache, the first-come bindings and each gateway's highest seq are seeded from it, and a
suspected seq gap is reported as missing only when no bridge stored those readings. The bindings
store (measurement ``bindings`` in retention policy ``keep``, written by the API) is loaded at
start and its changes are read again every ``BINDINGS_REFRESH_S`` (the whole store again every
``BINDINGS_FULL_EVERY`` refreshes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from processor.state import State
from processor.state.bindings import Bindings
from processor.state.lvc import Stamp
from processor.state.newest import NewestState
from telemetry_common.bindings import no_store_yet, store_changes
from telemetry_common.influx_query import InfluxError, InfluxQL, InfluxUnavailable, Series
from telemetry_common.influx_write import tag_str
from telemetry_common.influxql import (
    bindings_query,
    count_seq_range_query,
    highest_seq_of_epoch_query,
    highest_seq_per_gateway_query,
    newest_chargers_state_query,
    newest_gateways_state_query,
    newest_per_charger_query,
    newest_seq_per_gateway_query,
)
from telemetry_common.newest_state import (
    ChargerMark,
    GatewayKey,
    GatewayMark,
    charger_marks,
    charger_rows,
    current_epochs,
    gateway_marks,
    offer_charger,
)
from telemetry_common.schema import EPOCH_SHAPE
from telemetry_common.storage import SEQGAP_MEASUREMENT, SEQGAP_REFRESH_S

log = logging.getLogger(__name__)

_EPOCH: Final = re.compile(EPOCH_SHAPE)
#: A refresh of the bindings store reads the changes stamped after its previous read less this:
#: the API stamps a change with its own clock, which may be behind the bridge's.
BINDINGS_CLOCK_MARGIN: Final = timedelta(seconds=60)
#: Every this many refreshes the whole bindings store is read again (one row per charger): a
#: change stamped by an API clock further behind than the margin is not lost for good.
BINDINGS_FULL_EVERY: Final = 60


async def _query_with_retry(client: InfluxQL, q: str, max_backoff_s: float) -> list[Series]:
    delay = 0.5
    while True:
        try:
            return await client.query(q)
        except InfluxUnavailable as exc:
            log.warning("InfluxDB not available (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


@dataclass(frozen=True, slots=True)
class WarmUp:
    """How the bounded warm-up went: ``read`` (the state and the window were read within the
    budget), ``state_found`` (the newest-stored state held something: else the database was
    written by a version without it, and older history is read in the background) and the
    ``gateways`` known from either."""

    read: bool
    state_found: bool
    gateways: frozenset[str] = frozenset()

    @property
    def complete(self) -> bool:
        """Nothing is left for :func:`complete_warm_up`."""
        return self.read and self.state_found


async def warm_up(
    state: State,
    client: InfluxQL,
    max_backoff_s: float,
    newest: NewestState | None = None,
    *,
    budget_s: float = 30.0,
    window_s: float = 3600.0,
) -> WarmUp:
    """Seed the last-value cache, the bindings and gap tracking from the newest-stored state and
    the raw points of the last ``window_s`` (what another bridge stored but whose state point is
    not written yet), then load the bindings store: reads bounded by chargers x bridges and by
    the window, never by history. Gives up after ``budget_s`` (InfluxDB unavailable or slow):
    the bridge consumes anyway, :func:`complete_warm_up` finishes in the background."""
    found, recent = False, set[str]()
    try:
        async with asyncio.timeout(budget_s):
            found, recent = await _seed_recent(state, client, max_backoff_s, newest, window_s)
            if not await load_bindings_store(state.bindings, client, None, max_backoff_s):
                log.error(
                    "bindings store refused: only the file's bindings hold until a refresh reads it"
                )
    except TimeoutError:
        log.warning(
            "warm-up not done within %.0fs: consuming; it goes on in the background", budget_s
        )
        return WarmUp(read=False, state_found=found)
    log.info("bindings (%s): %s", state.bindings.mode, state.bindings.status())
    return WarmUp(read=True, state_found=found, gateways=frozenset(recent))


async def _seed_recent(
    state: State,
    client: InfluxQL,
    max_backoff_s: float,
    newest: NewestState | None,
    window_s: float,
    *,
    only_unknown: bool = False,
) -> tuple[bool, set[str]]:
    """Seed from the state and the recent window; returns whether the state held anything, and
    the gateways known from either (with ``only_unknown``, consuming began: gap tracking is not
    seeded, see :func:`_apply`)."""
    q_chargers, q_gateways = newest_chargers_state_query(), newest_gateways_state_query()
    chargers = charger_marks(await _state_rows(client, q_chargers, max_backoff_s))
    gateways = gateway_marks(await _state_rows(client, q_gateways, max_backoff_s))
    found = bool(chargers or gateways)
    if newest is not None:
        newest.seed(chargers, gateways)
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    recent = await _query_with_retry(client, newest_per_charger_query(since), max_backoff_s)
    for charger, seen in charger_rows(recent).items():
        offer_charger(chargers, charger, seen)
    for key, gw_mark in (await _gateway_window(client, max_backoff_s, since, None)).items():
        gateways[key] = gw_mark.merged(gateways.get(key))
    _apply(state, chargers, gateways, only_unknown=only_unknown, gaps=not only_unknown)
    log.info(
        "warm-up: %d chargers, %d gateways known (newest-stored state: %s; window %.0fs)",
        len(chargers),
        len(current_epochs(gateways)),
        "found" if found else "empty",
        window_s,
    )
    return found, {g for g, _ in gateways}


async def _state_rows(client: InfluxQL, q: str, max_backoff_s: float) -> list[Series]:
    """The answer to a query of the newest-stored state; none while its retention policy does
    not exist (nothing was written yet)."""
    try:
        return await _query_with_retry(client, q, max_backoff_s)
    except InfluxError as exc:
        if no_store_yet(exc):
            return []
        raise


def _apply(
    state: State,
    chargers: dict[str, ChargerMark],
    gateways: dict[GatewayKey, GatewayMark],
    *,
    only_unknown: bool,
    gaps: bool = True,
) -> None:
    """Seed the cache, the first-come bindings (with ``only_unknown``, of chargers not bound
    yet: consuming began) and, with ``gaps``, gap tracking (each gateway's current epoch: the
    epoch of its newest reading, and that epoch's highest seq; a gateway tracked already keeps
    its track).

    Once consuming began, gap tracking is seeded only from points older than the recent window:
    a seed read from storage while this bridge's own batches are stored but not yet observed
    would put the gateway's high above seqs still to be observed, and hide their gaps."""
    for charger, seen in chargers.items():
        state.lvc.offer(charger, Stamp(seen.ts_ns, seen.seq, seen.gateway_id))
        if not only_unknown or state.bindings.get(charger) is None:
            state.bindings.seed(charger, seen.gateway_id)
    if not gaps:
        return
    for gateway, (epoch, mark) in current_epochs(gateways).items():
        state.gaps.seed(gateway, epoch, mark.high, mark.high_ts)


async def _gateway_window(
    client: InfluxQL,
    max_backoff_s: float,
    since: datetime,
    until: datetime | None,
    *,
    highest: bool = True,
) -> dict[GatewayKey, GatewayMark]:
    """Per gateway epoch in ``[since, until)``: its newest point and (``highest``) its highest
    seq; without ``highest`` the newest point's seq stands for it (``last()`` reads the newest
    block of each series; ``max()`` reads every point of the range).

    A gateway's newest point names its current epoch; its highest seq is usually of that epoch
    too; one whose outbox was created again (a new epoch numbering from 1) is asked for its
    epoch's own highest seq. A newest point without an epoch whose highest has one gives the
    gateway's epoch-less track only (its current numbering cannot be told apart in storage)."""
    marks: dict[GatewayKey, GatewayMark] = {}
    q = newest_seq_per_gateway_query(since, until)
    for s in await _query_with_retry(client, q, max_backoff_s):
        gateway = s.tags.get("gateway_id")
        for row in s.rows() if gateway else []:
            ts, seq = int(row["time"]), int(row["seq"])
            marks[(str(gateway), _epoch(row.get("epoch")))] = GatewayMark(ts, seq, ts)
    if not highest:
        return marks
    q = highest_seq_per_gateway_query(since, until)
    for s in await _query_with_retry(client, q, max_backoff_s):
        gateway = s.tags.get("gateway_id")
        for row in s.rows() if gateway else []:
            gw, epoch = str(gateway), _epoch(row.get("epoch"))
            ts, seq = int(row["time"]), int(row["seq"])
            current = next((e for g, e in marks if g == gw), None)
            held = marks.get((gw, current))
            if epoch == current and held is not None:
                marks[(gw, epoch)] = GatewayMark(held.newest_ts, seq, ts).merged(held)
            elif current is None:
                marks.pop((gw, None), None)  # not seeded: its tracking starts with a reading
            elif held is not None:
                found = await _query_with_retry(
                    client, highest_seq_of_epoch_query(gw, current, since, until), max_backoff_s
                )
                rows = found[0].rows() if found else []
                if rows:
                    top = GatewayMark(held.newest_ts, int(rows[0]["seq"]), int(rows[0]["time"]))
                    marks[(gw, current)] = top.merged(held)
    return marks


#: Older history is read back in steps of this (one shard group of a raw retention policy of
#: more than six months, InfluxDB's default).
BACKFILL_STEP: Final = timedelta(days=7)


async def complete_warm_up(
    state: State,
    client: InfluxQL,
    newest: NewestState,
    write: WriteLines,
    window_s: float,
    done: WarmUp,
    history_s: float = 366 * 86400.0,
    max_backoff_s: float = 30.0,
) -> None:
    """:func:`_complete_warm_up`, tried again after any InfluxDB error (capped backoff) until it
    is done: a task of the processor, which must not stop the bridge (InfluxDB shutting down
    answers "query engine shutdown", which is no ``InfluxUnavailable``)."""
    delay = 0.5
    while True:
        try:
            await _complete_warm_up(
                state, client, newest, write, window_s, done, history_s, max_backoff_s
            )
        except InfluxError as exc:
            log.warning("warm-up in the background: %s; trying again in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
        else:
            return


async def _complete_warm_up(
    state: State,
    client: InfluxQL,
    newest: NewestState,
    write: WriteLines,
    window_s: float,
    done: WarmUp,
    history_s: float = 366 * 86400.0,
    max_backoff_s: float = 30.0,
) -> None:
    """What the bounded warm-up left, in the background while the bridge consumes (a task of
    the processor): the state and window again if they were not read in time (then a
    charger's first reading stored meanwhile may be seeded before this bridge offers it, and not
    published on the live feed: ``latest`` answers it from InfluxDB); and, on a
    database written by a version without the newest-stored state, the older history in steps
    of ``BACKFILL_STEP`` back to ``history_s`` (newest first), each step's chargers and gateways
    (a gateway: its newest point of the newest step that holds one, that point's seq standing
    for its highest: ``max()`` over a week costs seconds per million points) seeded where
    nothing newer is known and written to the state by ``write`` (lines of retention
    policy ``keep``, with this bridge's tag), so the next start finds them there."""
    found, recent = done.state_found, set(done.gateways)
    if not done.read:
        found, recent = await _seed_recent(
            state, client, max_backoff_s, newest, window_s, only_unknown=True
        )
    if found:
        return
    now = datetime.now(UTC)
    until = now - timedelta(seconds=window_s)
    oldest = now - timedelta(seconds=history_s)
    known = recent  # a gateway of the window: tracked from its readings, not seeded from history
    steps = 0
    while until > oldest:
        since = max(oldest, until - BACKFILL_STEP)
        q = newest_per_charger_query(since, until)
        chargers = charger_rows(await _query_with_retry(client, q, max_backoff_s))
        gateways = {
            key: mark
            for key, mark in (
                await _gateway_window(client, max_backoff_s, since, until, highest=False)
            ).items()
            if key[0] not in known
        }
        known.update(g for g, _ in gateways)
        _apply(state, chargers, gateways, only_unknown=True)
        lines = newest.lines(
            chargers.items(),
            ((key, [m.high, m.high], [m.newest_ts, m.high_ts]) for key, m in gateways.items()),
        )
        if lines:
            refused = await write(lines)
            if refused:
                log.error("InfluxDB refused newest-stored state lines: %s", list(refused)[:3])
        until = since
        steps += 1
    log.info("warm-up: older history read (%d steps back to %s)", steps, oldest.isoformat())


def store_rows(series: list[Series]) -> dict[str, str]:
    """Each charger's newest binding change in an answer of :func:`bindings_query`."""
    return {c: change.gateway_id for c, change in store_changes(series).items()}


async def load_bindings_store(
    bindings: Bindings, client: InfluxQL, since: datetime | None, max_backoff_s: float = 0
) -> bool:
    """Apply the store's changes after ``since`` (all: None) to ``bindings``; False if it was
    not read (the bindings held stay as they are, the error is counted and logged). With
    ``max_backoff_s`` an unavailable InfluxDB is waited for (warm-up). A missing retention
    policy (nobody bound anything yet) counts as an empty store."""
    started = time.time()
    q = bindings_query(since)
    try:
        if max_backoff_s > 0:
            series = await _query_with_retry(client, q, max_backoff_s)
        else:
            series = await client.query(q)
        changes = store_rows(series)
    except InfluxError as exc:
        if not no_store_yet(exc):
            bindings.refresh_errors += 1
            log.warning("bindings store not read: %s", exc)
            return False
        changes = {}
    changed = bindings.apply(changes)
    if changed:
        log.info("bindings store: %d chargers' bindings changed", changed)
    bindings.refreshed_at = started
    return True


async def refresh_bindings_forever(
    bindings: Bindings, client: InfluxQL, every_s: float, full_every: int = BINDINGS_FULL_EVERY
) -> None:
    """Read the store's changes every ``every_s``, forever (a task of the processor): the changes
    stamped after the last successful read less ``BINDINGS_CLOCK_MARGIN`` (a bounded query: one
    row per charger changed in that window), or the whole store while it was never read and at
    every ``full_every``-th refresh (a change stamped by an API clock more than the margin
    behind this host's is applied then, within ``full_every`` x ``every_s``)."""
    refreshes = 0
    while True:
        await asyncio.sleep(every_s)
        refreshes += 1
        last = bindings.refreshed_at
        since = None if last is None else datetime.fromtimestamp(last, UTC) - BINDINGS_CLOCK_MARGIN
        if refreshes % max(1, full_every) == 0:
            since = None
        await load_bindings_store(bindings, client, since)


def _epoch(value: object) -> str | None:
    """A stored ``epoch`` field as an epoch (anything else, as a missing field: None)."""
    return value if isinstance(value, str) and _EPOCH.fullmatch(value) else None


#: Writes line protocol, returns the lines refused for good (``InfluxOutput.write``).
WriteLines = Callable[[list[str]], Awaitable[dict[str, str]]]


def seqgap_lines(
    bridge: str,
    now: dict[str, tuple[int, int, int, int, str | None]],
    before: dict[str, tuple[int, int, int, int, str | None]],
    ts_ns: int,
    *,
    refresh: bool = False,
) -> list[str]:
    """``seqgaps`` points for the gateways whose confirmed gaps changed from ``before`` to
    ``now`` (a gateway gone from ``now``: ``missing=0``, its gaps filled or dropped); with
    ``refresh``, also for those in ``now`` that did not change."""
    lines = []
    for gateway in sorted(now.keys() | before.keys()):
        held = now.get(gateway)
        if held == before.get(gateway) and not (refresh and held is not None):
            continue
        missing, gaps, first, last, epoch = held if held is not None else (0, 0, 0, 0, None)
        fields = f"missing={missing}i,gaps={gaps}i,first={first}i,last={last}i"
        if epoch is not None:
            fields += f',epoch="{epoch}"'
        series = f"{SEQGAP_MEASUREMENT},bridge={tag_str(bridge)},gateway_id={tag_str(gateway)}"
        lines.append(f"{series} {fields} {ts_ns}")
    return lines


async def confirm_gaps_forever(
    state: State,
    client: InfluxQL,
    grace_s: float,
    write: WriteLines | None = None,
    bridge: str = "bridge",
) -> None:
    """Confirm suspected seq gaps against InfluxDB, forever (a task of the processor). With
    ``write``, each gateway's confirmed gaps are stored in ``seqgaps`` (tag ``bridge``) when
    they change, and again every SEQGAP_REFRESH_S while there are some (the API raises the
    ``seq_gap_confirmed`` alarm from them)."""

    async def count_stored(
        gw: str, epoch: str | None, first: int, last: int, lo: datetime, hi: datetime
    ) -> int:
        series = await client.query(count_seq_range_query(gw, first, last, lo, hi, epoch))
        return int(series[0].values[0][1]) if series and series[0].values else 0

    reported = 0
    gaps = state.gaps
    written: dict[str, tuple[int, int, int, int, str | None]] = {}
    refreshed = time.monotonic()
    while True:
        await asyncio.sleep(min(grace_s, 10.0))
        try:
            await gaps.confirm(count_stored, time.monotonic(), grace_s)
        except InfluxUnavailable as exc:
            log.warning("gap check postponed: %s", exc)
            continue
        if write is not None:
            written, refreshed = await _store_confirmed(
                gaps.confirmed(), written, refreshed, write, bridge
            )
        missing = gaps.missing()
        if missing != reported:
            log.warning(
                "seq gaps: %d readings missing (in no bridge's store): %s", missing, gaps.report()
            )
            reported = missing


async def _store_confirmed(
    confirmed: dict[str, tuple[int, int, int, int, str | None]],
    written: dict[str, tuple[int, int, int, int, str | None]],
    refreshed: float,
    write: WriteLines,
    bridge: str,
) -> tuple[dict[str, tuple[int, int, int, int, str | None]], float]:
    """Write what changed (or everything, at each refresh); returns what is now stored and when
    it was last refreshed. A failed write is tried again at the next round."""
    now = time.monotonic()
    refresh = bool(confirmed) and now - refreshed >= SEQGAP_REFRESH_S
    lines = seqgap_lines(bridge, confirmed, written, time.time_ns(), refresh=refresh)
    if not lines:
        return written, refreshed
    try:
        refused = await write(lines)
    except Exception as exc:  # the gap check goes on; the write is tried again next round
        log.warning("seqgaps not stored: %s", exc)
        return written, refreshed
    if refused:
        log.error("InfluxDB refused seqgaps lines: %s", refused)
    return dict(confirmed), now if refresh else refreshed
