"""query_api.resolution: which store answers a window, pure rules (docs/query-api.md#resolution)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from query_api.resolution import Resolution, ResolutionError, Retentions, aligned, choose

NOW = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
D, H, M = timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
RULES = Retentions(
    raw=30 * D, rollup_1m=365 * D, rollup_1h=1825 * D, rollup_1m_after=D, rollup_1h_after=31 * D
)


def _choose(
    span: timedelta,
    every: timedelta | None = None,
    forced: Resolution | None = None,
    *,
    ago: timedelta = timedelta(0),
    prefer_raw: bool = False,
) -> str:
    end = NOW - ago
    return choose(
        end - span, end, now=NOW, step=every, forced=forced, rules=RULES, prefer_raw=prefer_raw
    )


@pytest.mark.parametrize(
    ("span", "every", "expected"),
    [
        (6 * H, None, "raw"),
        (6 * H, 5 * M, "raw"),  # short windows stay fresh: raw even for every >= 1m
        (D, None, "raw"),
        (D + M, None, "1m"),
        (10 * D, None, "1m"),
        (31 * D, None, "1m"),
        (32 * D, None, "1h"),
        (365 * D, None, "1h"),
        (10 * D, 30 * timedelta(seconds=1), "raw"),  # below 1 min: raw while it is kept
        (10 * D, 90 * timedelta(seconds=1), "raw"),  # not a multiple of 1 min
        (10 * D, M, "1m"),
        (10 * D, 5 * M, "1m"),
        (10 * D, H, "1h"),
        (10 * D, D, "1h"),  # the coarsest that fits
        (365 * D, 5 * M, "1m"),
    ],
)
def test_the_window_and_every_pick_the_coarsest_store_that_fits(
    span: timedelta, every: timedelta | None, expected: str
) -> None:
    """Raw for short windows, then the coarsest rollup dividing every, else by window length."""
    assert _choose(span, every) == expected


def test_never_raw_for_a_window_older_than_the_raw_retention() -> None:
    """A short window 40 days back is served by the 1-minute rollups; every=30s there is refused
    with a message that says why and what works."""
    assert _choose(6 * H, ago=40 * D) == "1m"
    assert _choose(6 * H, ago=400 * D) == "1h"
    with pytest.raises(ResolutionError, match=r"every=30s .* kept for 30d.* use every=1m "):
        _choose(6 * H, timedelta(seconds=30), ago=40 * D)
    with pytest.raises(ResolutionError, match=r"1m rollups are kept for 365d.* use every=1h "):
        _choose(6 * H, 5 * M, ago=400 * D)


def test_stats_prefer_raw_readings_while_they_cover_the_window() -> None:
    """stats: raw (median, stddev exact) over 29 days; rollups only beyond the raw retention."""
    assert _choose(29 * D, prefer_raw=True) == "raw"
    assert _choose(40 * D, prefer_raw=True) == "1h"
    assert _choose(20 * D, ago=20 * D, prefer_raw=True) == "1m"


def test_a_forced_resolution_is_used_or_refused_clearly() -> None:
    """resolution= wins when it can answer; else a message naming the problem."""
    assert _choose(6 * H, forced="1h") == "1h"
    assert _choose(365 * D, forced="1m") == "1m"
    with pytest.raises(ResolutionError, match="raw readings are kept for 30d"):
        _choose(40 * D, forced="raw")
    with pytest.raises(ResolutionError, match="multiple of 1h"):
        _choose(10 * D, 5 * M, forced="1h")


def test_aligned_widens_to_whole_buckets() -> None:
    """Start down, end up; an aligned edge stays."""
    start = datetime(2026, 5, 1, 10, 30, tzinfo=UTC)
    end = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert aligned(start, end, H, EPOCH) == (datetime(2026, 5, 1, 10, tzinfo=UTC), end)
    assert aligned(start, end + M, H, EPOCH)[1] == datetime(2026, 5, 1, 13, tzinfo=UTC)
