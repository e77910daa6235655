"""Completeness: gaps in each gateway's ``seq`` are found, confirmed and reported (guarantee 2).

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

from processor.lineproto import ns_to_datetime


@dataclass(slots=True)
class Gap:
    gateway_id: str
    first: int
    last: int
    #: ts of the readings either side: the missing ones were captured in between.
    ts_lo: datetime
    ts_hi: datetime
    noticed: float
    confirmed_missing: int | None = None
    checked: float = 0.0

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class _Gateway:
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


#: (gateway_id, first, last, ts_lo, ts_hi) -> how many of seq first..last InfluxDB holds
CountStored = Callable[[str, int, int, datetime, datetime], Awaitable[int]]


class GapTracker:
    def __init__(self, *, max_gaps_per_gateway: int = 1000) -> None:
        self._gateways: dict[str, _Gateway] = {}
        self._max = max_gaps_per_gateway
        self.dropped = 0

    def seed(self, gateway_id: str, high: int, high_ts_ns: int) -> None:
        """Start from the highest seq InfluxDB holds, so a gap across a restart is seen."""
        self._gateways.setdefault(gateway_id, _Gateway(high, high_ts_ns))

    def observe_all(self, gateway_id: str, seqs: list[int], nss: list[int], now: float) -> None:
        """:meth:`observe` each (seq, ts_ns) in turn; the usual case, the gateway's next seqs
        in order, is one list comparison."""
        if not seqs:
            return
        gw = self._gateways.get(gateway_id)
        start = seqs[0] if gw is None else gw.high + 1
        if seqs == list(range(start, start + len(seqs))):
            if gw is None:
                self._gateways[gateway_id] = _Gateway(seqs[-1], nss[-1], seqs[0], nss[0])
            else:
                gw.high, gw.high_ts_ns = seqs[-1], nss[-1]
            return
        for seq, ns in zip(seqs, nss, strict=True):
            self.observe(gateway_id, seq, ns, now)

    def observe(self, gateway_id: str, seq: int, ts_ns: int, now: float) -> None:
        """A stored reading of ``gateway_id`` (``ts_ns``: its ts in integer nanoseconds)."""
        gw = self._gateways.get(gateway_id)
        if gw is None:
            self._gateways[gateway_id] = _Gateway(seq, ts_ns, seq, ts_ns)
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
        gw.gaps.append(Gap(gateway_id, first, last, ns_to_datetime(lo), ns_to_datetime(hi), now))
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
                                     gap.noticed))  # fmt: skip
                if seq < gap.last:
                    parts.append(Gap(gap.gateway_id, seq + 1, gap.last, gap.ts_lo, gap.ts_hi,
                                     gap.noticed))  # fmt: skip
                gw.gaps[i : i + 1] = parts
                return

    async def confirm(self, count_stored: CountStored, now: float, grace_s: float) -> None:
        """Check suspected gaps older than ``grace_s`` against storage; drop the filled ones.

        A confirmed gap is checked again (every ``grace_s``): a gateway may still replay it.
        """
        for gw in self._gateways.values():
            keep: list[Gap] = []
            for gap in gw.gaps:
                if now - gap.noticed >= grace_s and now - gap.checked >= grace_s:
                    slack = timedelta(minutes=1)
                    stored = await count_stored(
                        gap.gateway_id, gap.first, gap.last, gap.ts_lo - slack, gap.ts_hi + slack
                    )
                    gap.checked = now
                    if stored >= gap.size:
                        continue
                    gap.confirmed_missing = gap.size - stored
                keep.append(gap)
            gw.gaps = keep

    def missing(self) -> int:
        """Readings confirmed missing (in no bridge's store) across all gateways."""
        return sum(g.confirmed_missing or 0 for gw in self._gateways.values() for g in gw.gaps)

    def open_gaps(self) -> int:
        """Gaps suspected or confirmed, across all gateways."""
        return sum(len(gw.gaps) for gw in self._gateways.values())

    def report(self) -> dict[str, list[dict[str, object]]]:
        """Per gateway, the open gaps (suspected or confirmed) for the status document."""
        return {
            name: [
                {
                    "first_seq": g.first,
                    "last_seq": g.last,
                    "missing": g.confirmed_missing,
                    "state": "confirmed" if g.confirmed_missing is not None else "suspected",
                }
                for g in gw.gaps
            ]
            for name, gw in self._gateways.items()
            if gw.gaps
        }
