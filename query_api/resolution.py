"""Which store answers a history or stats query (pure): raw readings, 1-minute or 1-hour rollups.

The rollup job (docs/design.md#rollups) keeps raw readings for ``RAW_RETENTION`` and buckets of
1 minute and 1 hour longer. A query is served by:

- the resolution it forces (``resolution=raw|1m|1h``), if that one can answer it;
- raw readings when the window is at most ``ROLLUP_1M_AFTER`` long (default 1 d) and they still
  cover it (``stats``: whenever they still cover it: only they give the median and standard
  deviation). Short windows are the fresh ones: they never wait for the rollup job;
- otherwise, with ``every``: the coarsest rollup whose width divides ``every`` (a multiple of
  1 h: 1-hour rollups; of 1 min: 1-minute rollups), else raw readings (``every`` below 1 min or
  not a multiple of it);
- without ``every``: 1-minute rollups for a window up to ``ROLLUP_1H_AFTER`` (default 31 d),
  1-hour rollups beyond;

and never a store whose retention has already dropped the window's start (a coarser one serves
it then). A rollup bucket is stored once the rollup job has passed it: the newest minutes of a
rollup-served window appear with the job's lag; ``resolution=raw`` reads the readings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal, get_args

from query_api.timespec import format_duration
from telemetry_common.errors import TelemetryError

Resolution = Literal["raw", "1m", "1h"]
RESOLUTIONS: Final[tuple[str, ...]] = get_args(Resolution)
#: The response header that names the store an answer came from.
RESOLUTION_HEADER: Final = "X-Resolution"
#: The width of each rollup's buckets.
WIDTHS: Final[dict[str, timedelta]] = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1)}


class ResolutionError(TelemetryError, ValueError):
    """No store can answer the query as asked (the message says why and what would)."""


@dataclass(frozen=True, slots=True)
class Retentions:
    """How long each store keeps its points, and the window lengths that move a query from raw
    readings to 1-minute rollups and from those to 1-hour rollups."""

    raw: timedelta
    rollup_1m: timedelta
    rollup_1h: timedelta
    rollup_1m_after: timedelta
    rollup_1h_after: timedelta

    def keeps(self, resolution: str) -> timedelta:
        return {"raw": self.raw, "1m": self.rollup_1m, "1h": self.rollup_1h}[resolution]


def _fits(resolution: str, step: timedelta | None) -> bool:
    """Whether buckets of ``step`` are whole buckets of ``resolution`` (epoch-aligned)."""
    width = WIDTHS.get(resolution)
    return width is None or step is None or (step >= width and step % width == timedelta(0))


def _holds(resolution: str, start: datetime, now: datetime, rules: Retentions) -> bool:
    """Whether ``resolution`` still holds points from ``start`` on (the coarsest rollup always
    answers: what it no longer holds is gone everywhere)."""
    return resolution == "1h" or start >= now - rules.keeps(resolution)


def choose(
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    step: timedelta | None,
    forced: Resolution | None,
    rules: Retentions,
    prefer_raw: bool = False,
) -> Resolution:
    """The resolution that serves ``[start, end)`` (see the module's rules)."""
    if forced is not None:
        if not _fits(forced, step):
            raise ResolutionError(
                f"resolution={forced} needs every to be a multiple of {forced} (every is "
                f"{_show(step)})"
            )
        if not _holds(forced, start, now, rules):
            raise ResolutionError(
                f"resolution={forced}: {_kept(forced, rules)}; the window starts before that"
            )
        return forced
    span = end - start
    if _holds("raw", start, now, rules) and (prefer_raw or span <= rules.rollup_1m_after):
        return "raw"
    if step is not None:
        for candidate in ("1h", "1m", "raw"):
            if _fits(candidate, step) and _holds(candidate, start, now, rules):
                return candidate
        finest = "1m" if _holds("1m", start, now, rules) else "1h"
        gone = _kept("raw", rules) + ("" if finest == "1m" else f", {_kept('1m', rules)}")
        raise ResolutionError(
            f"every={_show(step)} cannot be served: {gone}, and the window starts before that; "
            f"use every={finest} or a multiple of it"
        )
    if span <= rules.rollup_1h_after and _holds("1m", start, now, rules):
        return "1m"
    return "1h"


def aligned(
    start: datetime, end: datetime, width: timedelta, epoch: datetime
) -> tuple[datetime, datetime]:
    """``[start, end)`` widened to whole buckets of ``width`` (epoch-aligned): start down, end
    up. A rollup bucket is then either wholly in the window or wholly out."""
    lo = start - (start - epoch) % width
    hi = end + (-(end - epoch)) % width
    return lo, hi


def _kept(resolution: str, rules: Retentions) -> str:
    name = "raw readings" if resolution == "raw" else f"{resolution} rollups"
    return f"{name} are kept for {format_duration(rules.keeps(resolution))}"


def _show(step: timedelta | None) -> str:
    return "not given" if step is None else format_duration(step)
