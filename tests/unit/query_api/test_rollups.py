"""query_api.rollups.combine: rollup rows of several connectors into a page's buckets (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from query_api.rollups import combine

H = 3_600 * 10**9


COLUMNS = [
    "time", "power_w_mean", "power_w_min", "power_w_max", "power_w_last", "power_w_count",
    "count",
]  # fmt: skip


def _row(t: int, count: int, **values: float) -> list[Any]:
    return [t, *(values.get(c) for c in COLUMNS[1:-1]), count]


#: ``count`` (readings) differs from ``power_w_count`` (readings that carried power_w) where
#: some readings of the bucket had no power_w: the weights are the key's own counts.
ROWS = [
    _row(0, 2, power_w_mean=10.0, power_w_min=5.0, power_w_max=20.0, power_w_last=12.0,
         power_w_count=1),
    _row(0, 3, power_w_mean=30.0, power_w_min=25.0, power_w_max=35.0, power_w_last=31.0,
         power_w_count=3),
    _row(0, 7),  # a connector without the key: does not weigh
    _row(H, 5, power_w_mean=1.1, power_w_min=1.0, power_w_max=1.2, power_w_last=1.15,
         power_w_count=2),
    _row(2 * H, 4, power_w_mean=3.3, power_w_min=3.0, power_w_max=3.5, power_w_last=3.4,
         power_w_count=4),
]  # fmt: skip


@pytest.mark.parametrize(
    ("agg", "hourly", "two_hourly"),
    [
        ("mean", [25.0, 1.1, 3.3], [25.0, 3.3]),
        ("sum", [100.0, 2.2, 13.2], [102.2, 13.2]),
        ("count", [4.0, 2.0, 4.0], [6.0, 4.0]),
        ("min", [5.0, 1.0, 3.0], [1.0, 3.0]),
        ("max", [35.0, 1.2, 3.5], [35.0, 3.5]),
        ("last", [31.0, 1.15, 3.4], [1.15, 3.4]),
    ],
)
def test_buckets_are_exact_aggregates_of_their_rows(
    agg: str, hourly: list[float], two_hourly: list[float]
) -> None:
    """Per bucket: the mean weighted by the key's counts, sum of mean * the key's count, sum of
    the key's counts, min of mins, max of maxes, the newest last; a single row's mean is kept as
    stored."""
    one = combine(COLUMNS, ROWS, ["power_w"], agg, H)  # type: ignore[arg-type]
    assert [t for t, _ in one] == [0, H, 2 * H]
    assert [v["power_w"] for _, v in one] == pytest.approx(hourly, rel=1e-15)
    if agg == "mean":
        assert one[1][1]["power_w"] == 1.1  # one row: exactly its mean
    two = combine(COLUMNS, ROWS, ["power_w"], agg, 2 * H)  # type: ignore[arg-type]
    assert [t for t, _ in two] == [0, 2 * H]
    want = two_hourly if agg != "mean" else [(100.0 + 2.2) / 6, 3.3]
    assert [v["power_w"] for _, v in two] == pytest.approx(want, rel=1e-15)


def test_buckets_without_values_are_left_out() -> None:
    """A bucket whose rows hold none of the keys is not a point."""
    assert combine(COLUMNS, [_row(0, 7), _row(H, 2)], ["power_w"], "mean", H) == []
