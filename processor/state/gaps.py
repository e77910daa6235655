"""Completeness: gaps in each gateway's ``seq`` are found, confirmed and reported (guarantee 2).

``seq`` is unique and increasing per (gateway, epoch): the epoch names the sender's outbox, and
a new outbox (deleted and created again) has a new epoch and numbers from 1 again. So each
(gateway, epoch) is tracked on its own: a gateway's readings with a new epoch start a new track,
and the old epoch's gaps stay, confirmed against InfluxDB and reported like any other until
they are filled or their track is dropped (a gateway keeps its newest ``MAX_EPOCHS`` tracks).

A bridge sees a gateway's readings in ``seq`` order, except for replays and late batches. When
``seq`` jumps, the skipped range becomes a *suspected* gap; a late arrival seen here fills it.
Several bridges in one share group each see only part of a gateway's messages, so a suspected gap
is confirmed against InfluxDB (which holds what every bridge stored) after a grace period: only
readings that are in no bridge's store are reported as missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from processor.lineproto import ns_to_datetime

#: Tracks (epochs) kept per gateway; a newer one beyond these drops the oldest with its gaps.
MAX_EPOCHS: Final = 4


@dataclass(slots=True)
class Gap:
    gateway_id: str
    first: int
    last: int
    #: ts of the readings either side (in seq order, so ``ts_lo`` is later when the gateway's
    #: clock stepped back): the missing ones were captured in between.
    ts_lo: datetime
    ts_hi: datetime
    noticed: float
    confirmed_missing: int | None = None
    checked: float = 0.0
    #: The epoch of the seqs (None: the gateway numbers its seqs for its whole life).
    epoch: str | None = None

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Gateway:
    """The track of one (gateway, epoch)."""

    high: int
    #: ts of the reading with seq ``high``, integer nanoseconds (as the processor has it).
    high_ts_ns: int
    #: The lowest seq seen since tracking began without a seed from storage (None when seeded:
    #: what lies below the seed is history). Batches are committed concurrently and finish in
    #: any order, so a new gateway's first observed seq need not be its lowest; a lower one
    #: arriving later opens the gap between them.
    low: int | None = None
    low_ts_ns: int = 0
    gaps: list[Gap] = field(default_factory=list)
    epoch: str | None = None


#: (gateway_id, epoch, first, last, ts_lo, ts_hi) -> how many of seq first..last InfluxDB holds
CountStored = Callable[[str, str | None, int, int, datetime, datetime], Awaitable[int]]


class GapTracker:
    def __init__(self, *, max_gaps_per_gateway: int = 1000) -> None:
        self._tracks: dict[tuple[str, str | None], _Gateway] = {}
        #: Per gateway, its tracked epochs, oldest first (at most MAX_EPOCHS).
        self._epochs: dict[str, list[str | None]] = {}
        self._max = max_gaps_per_gateway
        self.dropped = 0

    def _add(self, gateway_id: str, track: _Gateway) -> _Gateway:
        """Start ``track`` for ``gateway_id``; beyond MAX_EPOCHS the oldest track goes, with its
        gaps (counted in ``dropped``)."""
        self._tracks[(gateway_id, track.epoch)] = track
        epochs = self._epochs.setdefault(gateway_id, [])
        epochs.append(track.epoch)
        if len(epochs) > MAX_EPOCHS:
            old = self._tracks.pop((gateway_id, epochs.pop(0)))
            self.dropped += len(old.gaps)
        return track

    def seed(self, gateway_id: str, epoch: str | None, high: int, high_ts_ns: int) -> None:
        """Start from the highest seq InfluxDB holds of ``gateway_id``'s ``epoch``, so a gap
        across a restart is seen."""
        if (gateway_id, epoch) not in self._tracks:
            self._add(gateway_id, _Gateway(high, high_ts_ns, epoch=epoch))

    def high(self, gateway_id: str, epoch: str | None) -> int | None:
        """The highest seq seen (or seeded) of ``gateway_id``'s ``epoch``; None if unknown."""
        track = self._tracks.get((gateway_id, epoch))
        return None if track is None else track.high

    def observe_all(
        self, gateway_id: str, seqs: list[int], nss: list[int], now: float, epoch: str | None = None
    ) -> None:
        """:meth:`observe` each (seq, ts_ns) in turn; the usual case, the gateway's next seqs
        in order, is one list comparison."""
        if not seqs:
            return
        gw = self._tracks.get((gateway_id, epoch))
        start = seqs[0] if gw is None else gw.high + 1
        if seqs == list(range(start, start + len(seqs))):
            if gw is None:
                self._add(gateway_id, _Gateway(seqs[-1], nss[-1], seqs[0], nss[0], epoch=epoch))
            else:
                gw.high, gw.high_ts_ns = seqs[-1], nss[-1]
            return
        for seq, ns in zip(seqs, nss, strict=True):
            self.observe(gateway_id, seq, ns, now, epoch)

    def observe(
        self, gateway_id: str, seq: int, ts_ns: int, now: float, epoch: str | None = None
    ) -> None:
        """A stored reading of ``gateway_id`` (``ts_ns``: its ts in integer nanoseconds)."""
        gw = self._tracks.get((gateway_id, epoch))
        if gw is None:
            self._add(gateway_id, _Gateway(seq, ts_ns, seq, ts_ns, epoch=epoch))
            return
        if gw.low is not None and seq < gw.low:
            if seq < gw.low - 1:
                self._open(gw, gateway_id, seq + 1, gw.low - 1, ts_ns, gw.low_ts_ns, now)
            gw.low, gw.low_ts_ns = seq, ts_ns
            return
        if seq > gw.high + 1:
            self._open(gw, gateway_id, gw.high + 1, seq - 1, gw.high_ts_ns, ts_ns, now)
        if seq > gw.high:
            gw.high, gw.high_ts_ns = seq, ts_ns
        elif gw.gaps:
            self._fill(gw, seq)

    def _open(
        self, gw: _Gateway, gateway_id: str, first: int, last: int, lo: int, hi: int, now: float
    ) -> None:
        """Suspect seq ``first..last`` (captured between ts ``lo`` and ``hi``, in ns)."""
        gap = Gap(gateway_id, first, last, ns_to_datetime(lo), ns_to_datetime(hi), now)
        gap.epoch = gw.epoch
        gw.gaps.append(gap)
        if len(gw.gaps) > self._max:
            gw.gaps.pop(0)
            self.dropped += 1

    @staticmethod
    def _fill(gw: _Gateway, seq: int) -> None:
        for i, gap in enumerate(gw.gaps):
            if gap.first <= seq <= gap.last:
                parts = []
                if gap.first < seq:
                    parts.append(Gap(gap.gateway_id, gap.first, seq - 1, gap.ts_lo, gap.ts_hi,
                                     gap.noticed, epoch=gap.epoch))  # fmt: skip
                if seq < gap.last:
                    parts.append(Gap(gap.gateway_id, seq + 1, gap.last, gap.ts_lo, gap.ts_hi,
                                     gap.noticed, epoch=gap.epoch))  # fmt: skip
                gw.gaps[i : i + 1] = parts
                return

    async def confirm(self, count_stored: CountStored, now: float, grace_s: float) -> None:
        """Check suspected gaps older than ``grace_s`` against storage; drop the filled ones.

        A confirmed gap is checked again (every ``grace_s``): a gateway may still replay it.
        """
        for gw in list(self._tracks.values()):
            keep: list[Gap] = []
            for gap in gw.gaps:
                if now - gap.noticed >= grace_s and now - gap.checked >= grace_s:
                    # The missing readings were captured between their neighbours, whose ts
                    # are in either order: a clock stepped back stamps the later one earlier.
                    slack = timedelta(minutes=1)
                    lo, hi = sorted((gap.ts_lo, gap.ts_hi))
                    stored = await count_stored(
                        gap.gateway_id, gap.epoch, gap.first, gap.last, lo - slack, hi + slack
                    )
                    gap.checked = now
                    if stored >= gap.size:
                        continue
                    gap.confirmed_missing = gap.size - stored
                keep.append(gap)
            gw.gaps = keep

    def missing(self) -> int:
        """Readings confirmed missing (in no bridge's store) across all gateways."""
        return sum(g.confirmed_missing or 0 for gw in self._tracks.values() for g in gw.gaps)

    def open_gaps(self) -> int:
        """Gaps suspected or confirmed, across all gateways."""
        return sum(len(gw.gaps) for gw in self._tracks.values())

    def confirmed(self) -> dict[str, tuple[int, int, int, int, str | None]]:
        """Per gateway with confirmed gaps: ``(missing, gaps, first, last, epoch)``: readings
        confirmed missing, how many gaps, the lowest first and highest last seq, the epoch of
        the newest track with one (what :mod:`.storage` writes to ``seqgaps``)."""
        out: dict[str, tuple[int, int, int, int, str | None]] = {}
        for (name, _), gw in self._tracks.items():
            for g in gw.gaps:
                if g.confirmed_missing is None:
                    continue
                held = out.get(name)
                if held is None:
                    out[name] = (g.confirmed_missing, 1, g.first, g.last, g.epoch)
                else:
                    missing, n, first, last, _ = held
                    out[name] = (
                        missing + g.confirmed_missing,
                        n + 1,
                        min(first, g.first),
                        max(last, g.last),
                        g.epoch,
                    )
        return out

    def report(self) -> dict[str, list[dict[str, object]]]:
        """Per gateway, the open gaps (suspected or confirmed) for the status document, its
        epochs' in the order they were first seen."""
        out: dict[str, list[dict[str, object]]] = {}
        for (name, _), gw in self._tracks.items():
            for g in gw.gaps:
                out.setdefault(name, []).append(
                    {
                        "first_seq": g.first,
                        "last_seq": g.last,
                        "missing": g.confirmed_missing,
                        "state": "confirmed" if g.confirmed_missing is not None else "suspected",
                        "epoch": g.epoch,
                    }
                )
        return out
