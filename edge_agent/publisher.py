"""The publisher: batches leave the outbox only after the broker's PUBACK.

A *session* runs while the MQTT connection is up. At its start every pending row is backlog
(drained oldest first at ``drain_rate``); rows captured later are live (never paced). The two
lanes take turns (:class:`edge_agent.pacing.Lanes`), up to ``max_inflight_batches`` batches
await their PUBACK at once, and the backlog may use all but one slot, so a live batch never
waits for a backlog PUBACK. Outcomes per batch:

- PUBACK success: the rows are deleted.
- PUBACK with a failure reason code (not authorized, ...): permanent; the rows are parked and
  counted, and publishing goes on with the next batch.
- connection lost or no PUBACK in ``publish_timeout_s``: the rows stay; the session ends and the
  next one starts again from the oldest pending row (a replay is harmless), after a capped
  exponential backoff with jitter if the connection is still up.

A batch is *claimed* (:meth:`edge_agent.outbox.Outbox.claim`) before it is sent, and every
outcome above ends the claim, so the outbox knows which rows are in flight: if its budget drops
one of them meanwhile, the drop is counted only when the batch is not acknowledged
(:mod:`edge_agent.drops`).
- PUBACK 0x10 "no matching subscribers": the broker took the batch but nobody will receive it
  (no bridge is subscribed, as right after a broker restart, which does not restore the
  bridges' shared subscription): treated like a lost PUBACK, the rows stay and are sent again.

With ``delete_after = "stored"`` (the default) a PUBACK is not the end: the broker is not the
store (it may crash between autosaves, drop at its queue bounds, or hand the message to a
subscriber that is not a bridge). The batch stays claimed in the outbox, *unconfirmed*, until the
bridges' stored acknowledgements (``{root}/{gateway}/stored``, :meth:`Publisher.confirm`) cover
every seq of it; only then are its rows deleted. At most ``max_unconfirmed`` readings are sent and
unconfirmed at once, so during a long cloud outage the backlog waits here, not in the broker.

A batch is sent again only on evidence of loss, never merely because it is queued (a bridge
draining a backlog acknowledges in order, later than the timeout, but steadily; sending again
then only doubles the queue, and the fleet collapses into resending):

- *stall*: no acknowledgement at all (for this gateway and epoch) within the current timeout,
  counted from the later of the oldest unconfirmed batch's PUBACK and the last acknowledgement:
  the session ends like a lost PUBACK, everything unconfirmed is sent again (a replay is
  harmless), and the timeout doubles, up to ten times ``stored_timeout_s``;
- *hole*: a batch PUBACKed after batch B is fully confirmed, and B still is not
  ``stored_timeout_s`` after that (bridges of a share group may confirm out of order by a few
  seconds; this is their grace): B alone was dropped (a broker queue bound, a broker crash), so
  B alone ends its claim and is sent again, first, in the same session (``stored_holes``).

Acknowledgements never shorten a wait. The timeout adapts like TCP's retransmission timeout:
from the measured PUBACK-to-confirmation time of batches sent once (SRTT + 4 RTTVAR, Karn's
rule), floored at ``stored_timeout_s`` and capped at ten times it; after a stall it comes back
down by halves per acknowledgement, never below that estimate. Acknowledgements that arrive
after a batch was given up (the gateway's persistent session keeps them while it is away)
delete the rows they cover.

Memory: a batch at a time per slot, plus the seqs of the unconfirmed batches (bounded by
``max_unconfirmed``); nothing is proportional to the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from edge_agent.outbox import Outbox, OutboxRow
from edge_agent.pacing import Backoff, Lane, Lanes, TokenBucket
from edge_agent.settings import EdgeSettings
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NoSubscribersError,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)
from telemetry_common.schema import SCHEMA_ID
from telemetry_common.stored_ack import decode as parse_ack

log = logging.getLogger(__name__)

#: Upper bound on one idle wait, so a missed wake-up costs at most this.
IDLE_WAIT_S: Final = 1.0
#: Room for the envelope around the readings.
ENVELOPE_BYTES: Final = 256


def build_payload(gateway_id: str, rows: list[OutboxRow], epoch: str | None = None) -> bytes:
    """The ReadingBatch JSON for ``rows`` (bodies are stored already validated)."""
    head = b'{"schema":"%s","gateway_id":"%s",%s"readings":[' % (
        SCHEMA_ID.encode(),
        gateway_id.encode(),
        b'"epoch":"%s",' % epoch.encode() if epoch else b"",
    )
    return head + b",".join(r.reading_json() for r in rows) + b"]}"


@dataclass(slots=True)
class Unconfirmed:
    """A batch the broker acknowledged, waiting for the bridges' stored acknowledgement."""

    seqs: list[int]
    #: Its place in PUBACK order (counts up through the publisher's life).
    n: int
    #: When the broker acknowledged it (monotonic).
    puback_at: float
    #: Its seqs not acknowledged yet (those are the keys of the publisher's ``_awaited``).
    remaining: int = 0
    #: Sent before (its confirmation time is no latency sample: Karn's rule).
    resent: bool = False


@dataclass(slots=True)
class Counters:
    """What this process did (the outbox's own counters survive restarts; these do not)."""

    captured: int = 0
    published: int = 0
    batches: int = 0
    parked: int = 0
    retries: int = 0
    live_batches: int = 0
    backlog_batches: int = 0
    commands: int = 0
    commands_refused: int = 0
    #: Readings the bridges acknowledged as stored (deleted then), and batches sent again
    #: because no acknowledgement came in time.
    confirmed: int = 0
    stored_timeouts: int = 0
    #: Batches sent again alone because later ones were confirmed and they were not (holes).
    stored_holes: int = 0
    #: Readings sent and not yet acknowledged as stored (a gauge, kept by the publisher).
    unconfirmed: int = 0


class Publisher:
    def __init__(
        self,
        settings: EdgeSettings,
        outbox: Outbox,
        client: AsyncMqttClient,
        counters: Counters,
        *,
        drain_rate: float | None = None,
    ) -> None:
        self._s = settings
        self._outbox = outbox
        self._client = client
        self.counters = counters
        self._topic = settings.topics.readings(settings.gateway_id)
        rate = settings.drain_rate if drain_rate is None else drain_rate
        self.bucket = TokenBucket(rate, settings.batch_max_readings)
        self.lanes = Lanes()
        self._wake = asyncio.Event()
        self._failed = False
        self._flush = False
        self._backlog_inflight = 0
        self._linger_left = 0.0
        self._require_stored = settings.delete_after == "stored"
        self._epoch: str | None = outbox.epoch
        self._stored_timeout_s = settings.stored_timeout_s
        #: The last stored acknowledgement of our epoch (monotonic; 0: none yet).
        self._last_ack = 0.0
        #: Smoothed PUBACK-to-confirmation time and its variation (None: no sample yet).
        self._srtt: float | None = None
        self._rttvar = 0.0
        #: Seqs up to this one may have been sent in an earlier session (Karn's rule).
        self._sent_upto = 0
        self._karn_floor = 0
        #: Unconfirmed batches, oldest first, and each of their seqs still awaited.
        self._unconfirmed: deque[Unconfirmed] = deque()
        self._awaited: dict[int, Unconfirmed] = {}
        self._puback_count = 0
        #: (n, t): the batch n was fully confirmed, so every batch before it still unconfirmed
        #: at t is a hole. Increasing in n and t (a mark before the last one adds nothing).
        self._marks: deque[tuple[int, float]] = deque()
        #: Holes given up and waiting to be sent again (their seqs), oldest first, and the first
        #: seq of each hole batch on its way (Karn's rule).
        self._resend: deque[list[int]] = deque()
        self._resending: set[int] = set()
        self._publishing = 0  # readings awaiting their PUBACK

    def notify(self) -> None:
        """New rows are in the outbox."""
        self._wake.set()

    @property
    def unconfirmed(self) -> int:
        """Readings sent and not yet acknowledged as stored (awaiting their PUBACK or the
        bridges' acknowledgement)."""
        return len(self._awaited) + self._publishing

    async def confirm(self, payload: bytes) -> None:
        """A stored acknowledgement arrived: delete what it covers (batches fully covered, and
        pending rows not in flight: acknowledged after their batch was given up)."""
        try:
            epoch, ranges = parse_ack(payload)
        except ValueError as exc:
            log.warning("%s", exc)
            return
        if epoch != self._epoch:
            log.debug(
                "stored acknowledgement for epoch %s ignored (outbox: %s)", epoch, self._epoch
            )
            return
        done: list[Unconfirmed] = []
        late: list[tuple[int, int]] = []
        awaited = self._awaited
        for first, last in ranges:
            span = last - first + 1
            seqs = (
                range(first, last + 1)
                if span <= len(awaited)
                else [q for q in awaited if first <= q <= last]
            )
            covered = 0
            for seq in seqs:
                batch = awaited.pop(seq, None)
                if batch is None:
                    continue
                covered += 1
                batch.remaining -= 1
                if not batch.remaining:
                    done.append(batch)
            if covered < span:
                late.append((first, last))
        now = self._last_ack = time.monotonic()
        self._progress(done, now)
        # Before any await: a session ending meanwhile gives up only the batches still awaited
        # (done ones have no seq left). Done batches leave the front of the list here; one done
        # out of order stays until those before it are done too (O(1) per batch, not O(n)).
        queue = self._unconfirmed
        while queue and not queue[0].remaining:
            queue.popleft()
        for batch in done:
            try:
                await asyncio.to_thread(self._outbox.delete, batch.seqs)
            except sqlite3.Error:
                # Not deleted (disk full, busy): end the claim so the rows go again rather than
                # stay claimed for good; a replay is harmless.
                log.exception("confirmed readings not deleted; they will be sent again")
                await asyncio.to_thread(self._outbox.release, batch.seqs)
                self._failed = True  # a new session starts from the oldest pending row
                continue
            self.counters.confirmed += len(batch.seqs)
        if late:
            try:
                self.counters.confirmed += await asyncio.to_thread(self._outbox.forget, late)
            except sqlite3.Error:
                log.exception("confirmed readings not deleted; they will be sent again")
        self._wake.set()

    def _progress(self, done: list[Unconfirmed], now: float) -> None:
        """An acknowledgement arrived (``now``) completing ``done``: sample their latency, mark
        the batches before each as holes-to-be, and let the timeout come down towards what the
        cloud's latency allows. Nothing here shortens a wait."""
        for batch in done:
            if not batch.resent and batch.seqs[0] > self._karn_floor:
                sample = now - batch.puback_at
                if self._srtt is None:
                    self._srtt, self._rttvar = sample, sample / 2
                else:
                    self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
                    self._srtt = 0.875 * self._srtt + 0.125 * sample
            # Batches before this one still unconfirmed become holes after the grace.
            front = self._unconfirmed[0] if self._unconfirmed else None
            later = not self._marks or self._marks[-1][0] < batch.n
            if front is not None and front.n < batch.n and later:
                self._marks.append((batch.n, now + self._s.stored_timeout_s))
        self._stored_timeout_s = max(self._rto(), self._stored_timeout_s / 2)

    def _rto(self) -> float:
        """The timeout the measured latency calls for, between the setting and ten times it."""
        base = self._s.stored_timeout_s
        if self._srtt is None:
            return base
        return min(10 * base, max(base, self._srtt + 4 * self._rttvar))

    def flush(self) -> None:
        """Send the current backlog without pacing (the ``flush`` command)."""
        self._flush = True
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until cancelled or, once ``stop`` is set, until the outbox is empty."""
        backoff = Backoff(0.5, self._s.reconnect_max_s)
        # Rows an earlier process saw dropped while in flight will never get their PUBACK now.
        await asyncio.to_thread(self._outbox.settle_in_flight)
        while True:
            await self._client.wait_connected()
            if await self._session(stop):
                return
            if self._failed and self._client.connected:
                await asyncio.sleep(backoff.next())
            elif not self._failed:
                backoff.reset()

    async def _session(self, stop: asyncio.Event | None) -> bool:
        """One connection's worth of publishing; True once ``stop`` is set and all is sent."""
        last = await asyncio.to_thread(self._outbox.last_seq)
        pending = await asyncio.to_thread(self._outbox.pending)
        # Less than a batch waiting is no backlog: it all goes as live (and lingers with what
        # is being captured right now, rather than being split at the connect).
        self.lanes.reset(last if pending >= self._s.batch_max_readings else 0)
        self._karn_floor = self._sent_upto  # what this session sends up to there is a resend
        self._failed = False
        self._backlog_inflight = 0
        window = self._s.max_inflight_batches
        backlog_slots = max(1, window - 1)
        inflight: set[asyncio.Task[None]] = set()
        try:
            while not self._failed and self._client.connected:
                self._wake.clear()
                if self._stored_overdue():
                    break
                await self._give_up_holes()
                unconfirmed = self.counters.unconfirmed = self.unconfirmed  # (the gauge)
                if len(inflight) < window and unconfirmed < self._s.max_unconfirmed:
                    room = self._s.max_unconfirmed - unconfirmed
                    picked = await self._pick(self._backlog_inflight < backlog_slots, room)
                    if picked is not None:
                        if picked[1]:  # empty: the budget dropped the whole batch meanwhile
                            self._publishing += len(picked[1])  # _send takes it off
                            task = asyncio.create_task(self._send(*picked))
                            inflight.add(task)
                            task.add_done_callback(inflight.discard)
                        continue
                    if not inflight and stop is not None and stop.is_set() and await self._empty():
                        return True
                await self._idle(inflight)
        finally:
            if inflight:  # each is bounded by publish_timeout_s
                await asyncio.wait(inflight)
            await self._give_up_unconfirmed()
        return False

    def _stored_deadline(self) -> float | None:
        """When the oldest unconfirmed batch is overdue: a stall (no acknowledgement within the
        timeout since its PUBACK or the last acknowledgement) or a hole (a later batch was
        confirmed ``stored_timeout_s`` ago). The oldest is always the first overdue."""
        if not self._unconfirmed:
            return None
        front = self._unconfirmed[0]
        stall = max(front.puback_at, self._last_ack) + self._stored_timeout_s
        hole = self._hole_deadline(front)
        return stall if hole is None else min(stall, hole)

    def _hole_deadline(self, front: Unconfirmed) -> float | None:
        """When ``front`` (the oldest unconfirmed batch) becomes a hole: the first mark of a
        batch after it (marks before it concern batches gone already)."""
        marks = self._marks
        while marks and marks[0][0] < front.n:
            marks.popleft()
        return marks[0][1] if marks else None

    def _stored_overdue(self) -> bool:
        """True (and the session ends) when nothing was acknowledged for the timeout (a stall)."""
        if not self._unconfirmed:
            return False
        front = self._unconfirmed[0]
        if max(front.puback_at, self._last_ack) + self._stored_timeout_s > time.monotonic():
            return False
        self.counters.stored_timeouts += 1
        self._failed = True
        log.warning(
            "%d readings acknowledged by the broker but not confirmed stored, and no stored "
            "acknowledgement at all for %.0f s; sending them again",
            len(self._awaited),
            self._stored_timeout_s,
        )
        self._stored_timeout_s = min(self._stored_timeout_s * 2, 10 * self._s.stored_timeout_s)
        return True

    async def _give_up_holes(self) -> None:
        """Send again, alone, each oldest batch still unconfirmed ``stored_timeout_s`` after a
        later one was confirmed (its claim ends now; :meth:`_pick` sends it first)."""
        queue, now = self._unconfirmed, time.monotonic()
        holes: list[Unconfirmed] = []
        while queue and (hole := self._hole_deadline(queue[0])) is not None and hole <= now:
            batch = queue.popleft()
            if not batch.remaining:  # done meanwhile (popped by confirm otherwise)
                continue
            for seq in batch.seqs:
                self._awaited.pop(seq, None)
            batch.remaining = 0
            holes.append(batch)
        for batch in holes:  # (no await above: confirm sees either state, never half)
            self.counters.stored_holes += 1
            log.warning(
                "readings seq %d..%d not confirmed stored %.0f s after later ones were; "
                "sending them again",
                batch.seqs[0],
                batch.seqs[-1],
                self._s.stored_timeout_s,
            )
            await asyncio.to_thread(self._outbox.release, batch.seqs)
            self._resend.append(batch.seqs)

    async def _give_up_unconfirmed(self) -> None:
        """End the claims of the unconfirmed batches: the next session sends them again (an
        acknowledgement arriving later still deletes them, :meth:`confirm`)."""
        batches = [b for b in self._unconfirmed if b.remaining]
        self._unconfirmed.clear()
        self._awaited.clear()
        self._resend.clear()  # released already; the next session starts from the oldest row
        self._marks.clear()
        for batch in batches:
            await asyncio.to_thread(self._outbox.release, batch.seqs)

    async def _empty(self) -> bool:
        return await asyncio.to_thread(self._outbox.pending) == 0

    async def _idle(self, inflight: set[asyncio.Task[None]]) -> None:
        timeout = IDLE_WAIT_S
        deadline = self._stored_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.01, deadline - time.monotonic()))
        if self._linger_left > 0:
            timeout = min(timeout, self._linger_left)
        if not self.lanes.backlog_done and not self._flush:
            timeout = min(timeout, max(0.01, self.bucket.wait_s()))
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {wake, *inflight}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()

    async def _pick(self, backlog_ok: bool, room: int) -> tuple[Lane, list[OutboxRow]] | None:
        """The next batch to send, of at most ``room`` readings (the unconfirmed window)."""
        s, lanes = self._s, self.lanes
        max_bytes = s.batch_max_bytes - ENVELOPE_BYTES
        self._linger_left = 0.0
        while backlog_ok and self._resend:  # holes first: the cloud is waiting for them
            seqs = self._resend[0]
            limit = min(s.batch_max_readings, room)
            rows = await asyncio.to_thread(
                self._outbox.batch_after, seqs[0] - 1, seqs[-1], limit, max_bytes
            )
            rest = [q for q in seqs if rows and q > rows[-1].seq]
            if rest:
                self._resend[0] = rest
            else:
                self._resend.popleft()
            claimed = await asyncio.to_thread(self._outbox.claim, rows)
            if claimed:  # (none: confirmed or dropped meanwhile)
                self._resending.add(claimed[0].seq)
                return "backlog", claimed
        for lane in lanes.order():
            if lane == "live":
                fetch = self._outbox.batch_after
                limit = min(s.batch_max_readings, room)
                rows = await asyncio.to_thread(fetch, lanes.live_after, None, limit, max_bytes)
                if rows and len(rows) < limit and s.linger_s > 0:
                    young = s.linger_s - (time.time() - rows[0].captured_at)
                    if young > 0:  # let readings captured together travel together
                        self._linger_left = young
                        continue
            else:
                if not backlog_ok or lanes.backlog_done:
                    continue
                n = s.batch_max_readings if self._flush else self.bucket.available()
                n = min(n, room)
                if n == 0:
                    continue
                rows = await asyncio.to_thread(
                    self._outbox.batch_after, lanes.backlog_after, lanes.floor, n, max_bytes
                )
                if not rows:
                    lanes.backlog_done = True
                    self._flush = False
                    continue
                if not self._flush:
                    self.bucket.take(len(rows))
            if rows:
                lanes.sent(lane, rows[-1].seq)
                return lane, await asyncio.to_thread(self._outbox.claim, rows)
        return None

    async def _send(self, lane: Lane, rows: list[OutboxRow]) -> None:
        """Publish a claimed batch and end the claim with its outcome."""
        seqs = [r.seq for r in rows]
        resent = seqs[0] in self._resending
        self._resending.discard(seqs[0])
        self._sent_upto = max(self._sent_upto, seqs[-1])
        if lane == "backlog":
            self._backlog_inflight += 1
        try:
            async with asyncio.timeout(self._s.publish_timeout_s):
                await self._client.publish(
                    self._topic,
                    build_payload(self._s.gateway_id, rows, self._epoch),
                    require_subscribers=True,
                )
        except PublishRejectedError as exc:
            # Permanent: retrying cannot help, deleting would lose data. Park and count.
            parked = await asyncio.to_thread(self._outbox.park, seqs, exc.reason)
            self.counters.parked += parked
            log.error(
                "broker refused a batch of %d readings (%s); parked seq %d..%d",
                parked,
                exc.reason,
                seqs[0],
                seqs[-1],
            )
            return
        except (PublishLostError, NotConnectedError, NoSubscribersError, TimeoutError) as exc:
            self.counters.retries += 1
            self._failed = True
            self._wake.set()
            log.warning("batch of %d not acknowledged (%s); it stays in the outbox", len(seqs), exc)
            await asyncio.to_thread(self._outbox.release, seqs)
            return
        except BaseException:
            # Cancelled (shutting down) or an unexpected error: the PUBACK will not be seen.
            # End the claim here (blocking briefly is fine then; the loop may be closing).
            self._outbox.release(seqs)
            raise
        finally:
            if lane == "backlog":
                self._backlog_inflight -= 1
            self._publishing -= len(seqs)
        if self._require_stored:
            # Stays claimed until the bridges say it is stored (or the session gives it up).
            self._puback_count += 1
            batch = Unconfirmed(seqs, self._puback_count, time.monotonic(), len(seqs), resent)
            self._unconfirmed.append(batch)
            self._awaited.update(dict.fromkeys(seqs, batch))
        else:
            await asyncio.to_thread(self._outbox.delete, seqs)
        c = self.counters
        c.published += len(seqs)
        c.batches += 1
        if lane == "live":
            c.live_batches += 1
        else:
            c.backlog_batches += 1
