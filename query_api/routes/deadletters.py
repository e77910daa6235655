"""``/v1/deadletters``: list the stored dead letters and replay them (role ``admin``).

A replay publishes each dead letter's stored bytes on ``{root}/replay/{gateway_id}/readings``
through the API's broker link, with the MQTT 5 user property ``replay-of`` = its id; a bridge
processes it like any other message and writes the outcome onto the dead letter
(``replayed_at``, ``replay_outcome``). See docs/query-api.md#dead-letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from query_api import cursor
from query_api.auth import require
from query_api.deadletters import (
    DeadLetter,
    DeadLetterPage,
    NotReplayable,
    Refused,
    ReplayAnswer,
    ReplayPublisher,
    ReplayRequest,
    item_of,
    replay_payload,
)
from query_api.deps import Influx, Now, Settings
from query_api.params import END_DOC, START_DOC, window
from query_api.problems import ProblemError, problem_responses
from telemetry_common import influxql
from telemetry_common.deadletters import (
    OUTCOME_STORED,
    REASON_PATTERN,
    REPLAY_PROPERTY,
    DeadLetterIdError,
    DeadLetterKey,
    decode_id,
)
from telemetry_common.ids import ID_PATTERN
from telemetry_common.influx_query import InfluxQL
from telemetry_common.mqtt import (
    MqttError,
    NoSubscribersError,
    NotConnectedError,
)
from telemetry_common.schema import format_ts

router = APIRouter(
    prefix="/v1/deadletters",
    tags=["dead letters"],
    dependencies=[Depends(require("admin"))],
    responses=problem_responses(401, 403, 422, 502, 503),
)

#: The window when ``start`` is not given, and the widest one may ask for (dead letters live
#: as long as the default retention policy keeps them: RAW_RETENTION of the rollup service).
DEFAULT_RANGE: Final = timedelta(days=30)
MAX_RANGE: Final = timedelta(days=3660)
MAX_PAGE: Final = 500
#: InfluxDB lookups and publishes in flight at once during one replay.
CONCURRENCY: Final = 20
#: Rows one request reads at most while it skips the dead letters a replay has stored.
SCAN_MAX: Final = 100_000
RETRY_AFTER_S: Final = "5"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")
R = TypeVar("R")


async def _chunked(items: Sequence[T], fn: Callable[[T], Awaitable[R]]) -> list[R]:
    out: list[R] = []
    for at in range(0, len(items), CONCURRENCY):
        out += await asyncio.gather(*(fn(x) for x in items[at : at + CONCURRENCY]))
    return out


async def _one(influx: InfluxQL, key: DeadLetterKey) -> DeadLetter | None:
    series = await influx.query(influxql.deadletter_query(key.ns, key.reason, key.gateway_id))
    rows = [row for s in series for row in s.rows()]
    return item_of(rows[0]) if rows else None


def _wanted(item: DeadLetter, exclude_stored: bool) -> bool:
    return not (exclude_stored and item.replay_outcome == OUTCOME_STORED)


async def _page(
    influx: InfluxQL,
    *,
    start_ns: int,
    end_ns: int,
    reason: str | None,
    gateway_id: str | None,
    limit: int,
    until_ns: int | None = None,
    seen: frozenset[str] = frozenset(),
    exclude_stored: bool = False,
) -> tuple[list[DeadLetter], bool]:
    """Up to ``limit`` dead letters, newest first, and whether more follow; with
    ``exclude_stored`` none a replay has stored (``replay_outcome`` is a field: InfluxDB 1.x
    cannot select "missing or not stored", so they are skipped here, reading on past them, at
    most :data:`SCAN_MAX` rows; beyond that the answer says more follow)."""
    out: list[DeadLetter] = []
    skip = set(seen)
    scanned = 0
    while True:
        want = limit + 1 - len(out)
        asked = want + len(skip)
        q = influxql.deadletters_query(
            _EPOCH + timedelta(microseconds=start_ns // 1000),
            _EPOCH + timedelta(microseconds=end_ns // 1000),
            limit=asked,
            reason=reason,
            gateway_id=gateway_id,
            until_ns=until_ns,
        )
        rows = [row for s in await influx.query(q) for row in s.rows()]
        batch = [item_of(row) for row in rows]
        out += [i for i in batch if i.id not in skip and _wanted(i, exclude_stored)]
        scanned += len(batch)
        if len(out) > limit or len(batch) < asked or not batch:
            break
        if scanned >= SCAN_MAX:
            return out[:limit], True
        # Read on below the last time seen (the ones at that time already seen are skipped).
        last = decode_id(batch[-1].id).ns
        at_last = {i.id for i in batch if decode_id(i.id).ns == last}
        skip = skip | at_last if last == until_ns else at_last
        until_ns = last
    return out[:limit], len(out) > limit


def _ns(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


@router.get("", summary="Stored dead letters, newest first; paginated (role admin)")
async def list_deadletters(
    request: Request,
    influx: Influx,
    now: Now,
    reason: Annotated[
        str | None, Query(pattern=REASON_PATTERN, description="only this reason")
    ] = None,
    gateway_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="only this gateway's")
    ] = None,
    start: Annotated[str | None, Query(description=START_DOC + "; default 30 days back")] = None,
    end: Annotated[str | None, Query(description=END_DOC)] = None,
    exclude_stored: Annotated[
        bool, Query(description="leave out the ones a replay has stored (replay_outcome stored)")
    ] = False,
    limit: Annotated[int, Query(ge=1, description=f"per page, at most {MAX_PAGE}")] = 100,
    cursor_: Annotated[
        str | None, Query(alias="cursor", description="next_cursor of the previous page")
    ] = None,
) -> DeadLetterPage:
    if limit > MAX_PAGE:
        raise ProblemError(
            422, "limit-too-large", f"limit={limit} exceeds the maximum of {MAX_PAGE} per page"
        )
    query = cursor.fingerprint("deadletters", reason, gateway_id, start, end, exclude_stored)
    cursors: cursor.Cursors = request.app.state.cursors
    until_ns: int | None = None
    seen: frozenset[str] = frozenset()
    if cursor_ is not None:
        try:
            body = cursors.decode(cursor_, "deadletters", query)
            start_ns, end_ns, until_ns = int(body["a"]), int(body["b"]), int(body["t"])
            seen = frozenset(str(s) for s in body["s"])
            # Signed, and still a window the first request could have asked (a leaked key
            # does not lift the range limit).
            if not start_ns <= until_ns <= end_ns:
                raise cursor.CursorError("the cursor is damaged")  # noqa: TRY301
            if end_ns - start_ns > MAX_RANGE // timedelta(microseconds=1) * 1000:
                raise cursor.CursorError(  # noqa: TRY301
                    f"the cursor's range exceeds the maximum of {MAX_RANGE.days} days"
                )
        except (cursor.CursorError, KeyError, TypeError, ValueError) as exc:
            raise ProblemError(422, "invalid-cursor", str(exc)) from exc
    else:
        w = window(start, end, now=now, default_range=DEFAULT_RANGE, max_range=MAX_RANGE)
        start_ns, end_ns = _ns(w.start), _ns(w.end)
    items, more = await _page(
        influx,
        start_ns=start_ns,
        end_ns=end_ns,
        reason=reason,
        gateway_id=gateway_id,
        limit=limit,
        until_ns=until_ns,
        seen=seen,
        exclude_stored=exclude_stored,
    )
    next_cursor = None
    if more and items:
        last = decode_id(items[-1].id).ns
        at_last = [i.id for i in items if decode_id(i.id).ns == last]
        if last == until_ns:
            at_last += seen
        body = {"a": start_ns, "b": end_ns, "t": last, "s": at_last}
        next_cursor = cursors.encode("deadletters", query, body)
    return DeadLetterPage(items=items, next_cursor=next_cursor)


def _key(deadletter_id: str) -> DeadLetterKey:
    try:
        return decode_id(deadletter_id)
    except DeadLetterIdError as exc:
        raise ProblemError(404, "not-found", str(exc)) from exc


@router.get(
    "/{deadletter_id}",
    summary="One dead letter (role admin)",
    responses=problem_responses(404),
)
async def get_deadletter(deadletter_id: str, influx: Influx) -> DeadLetter:
    found = await _one(influx, _key(deadletter_id))
    if found is None:
        raise ProblemError(404, "not-found", f"no dead letter {deadletter_id!r}")
    return found


async def _selected(
    body: ReplayRequest, influx: InfluxQL, now: datetime
) -> tuple[list[DeadLetter], list[Refused], bool]:
    """The dead letters a replay takes, the ids refused, and whether more match the filter."""
    refused: list[Refused] = []
    if body.ids is not None:
        keys: list[DeadLetterKey] = []
        for text in body.ids:
            try:
                keys.append(decode_id(text))
            except DeadLetterIdError as exc:
                refused.append(Refused(id=text, reason=f"not_found: {exc}"))
        found = await _chunked(keys, lambda k: _one(influx, k))
        for key, item in zip(keys, found, strict=True):
            if item is None:
                refused.append(Refused(id=key.id, reason="not_found: no such dead letter"))
        return [item for item in found if item is not None], refused, False
    assert body.filter is not None
    f = body.filter
    w = window(f.start, f.end, now=now, default_range=DEFAULT_RANGE, max_range=MAX_RANGE)
    items, more = await _page(
        influx,
        start_ns=_ns(w.start),
        end_ns=_ns(w.end),
        reason=f.reason,
        gateway_id=f.gateway_id,
        limit=body.limit,
        exclude_stored=f.exclude_stored,
    )
    return items, refused, more


@router.post(
    "/replay",
    status_code=202,
    summary="Replay dead letters by ids or by filter (role admin)",
    responses=problem_responses(503),
)
async def replay(
    body: ReplayRequest, request: Request, influx: Influx, now: Now, settings: Settings
) -> ReplayAnswer:
    broker: ReplayPublisher | None = request.app.state.broker
    if broker is None or not broker.connected:
        raise ProblemError(
            503,
            "broker-unavailable",
            "the API is not connected to the broker; retry later",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    items, refused, more = await _selected(body, influx, now)
    requested_at = format_ts(now)
    replayable: list[tuple[DeadLetter, bytes]] = []
    for item in items:
        try:
            replayable.append((item, replay_payload(item)))
        except NotReplayable as exc:
            refused.append(Refused(id=item.id, reason=str(exc)))
    topics = settings.topics
    accepted: list[str] = []
    stop: str | None = None

    async def send(entry: tuple[DeadLetter, bytes]) -> MqttError | None:
        item, payload = entry
        try:
            await publisher.publish(
                topics.replay(item.gateway_id),
                payload,
                user_properties=((REPLAY_PROPERTY, item.id),),
            )
        except MqttError as exc:
            return exc
        return None

    publisher = broker
    for at in range(0, len(replayable), CONCURRENCY):
        chunk = replayable[at : at + CONCURRENCY]
        if stop is not None:  # no bridge or no broker: the rest would fail alike
            refused += [Refused(id=item.id, reason=stop) for item, _ in chunk]
            continue
        for (item, _), error in zip(
            chunk, await asyncio.gather(*(send(e) for e in chunk)), strict=True
        ):
            if error is None:
                accepted.append(item.id)
                continue
            refused.append(Refused(id=item.id, reason=f"not_published: {error}"))
            if isinstance(error, NoSubscribersError | NotConnectedError):
                stop = f"not_published: {error}"
    previous = {item.id: item.replayed_at for item, _ in replayable}
    return ReplayAnswer(
        accepted=accepted,
        refused=refused,
        requested_at=requested_at,
        more=more,
        previous_replayed_at={i: previous[i] for i in accepted},
    )
