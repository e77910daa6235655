"""Figures as the benchmarks print them: nearest-rank percentiles, ok/MISSED, an aligned table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Row = tuple[str, str, str]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    """Rows of (figure, measured, note) as an aligned table."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out("")
    out(f"{'figure':<{w0}}  {'measured':>{w1}}  note")
    out(f"{'-' * w0}  {'-' * w1}  ----")
    for name, value, note in rows:
        out(f"{name:<{w0}}  {value:>{w1}}  {note}")
    out("")
