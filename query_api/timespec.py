"""Time parameters of the history endpoints (pure): instants, durations and the query window.

An instant is ``now``, a relative offset into the past (``-15m``, ``-1h``, ``-7d``) or an RFC 3339
timestamp with a UTC offset (``2026-05-01T12:00:00Z``). A duration is ``<n><unit>`` with unit
``ms s m h d w`` (``30s``, ``5m``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from telemetry_common.errors import TelemetryError
from telemetry_common.schema import TS_MAX, TS_MIN

_DURATION: Final = re.compile(r"([1-9][0-9]{0,8})(ms|s|m|h|d|w)")
_UNITS: Final = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


class TimeSpecError(TelemetryError, ValueError):
    """A time parameter that cannot be used (carries the parameter name and its value)."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        super().__init__(f"{parameter}={value!r}: {problem}")
        self.parameter = parameter
        self.value = value
        self.problem = problem


def format_duration(td: timedelta) -> str:
    """``td`` in the units of :func:`parse_duration`, e.g. ``31d``, ``1h30m``, ``500ms``."""
    micros = td // timedelta(microseconds=1)
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNITS[unit] // timedelta(microseconds=1)
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    if micros or not parts:
        parts.append(f"{micros}us")
    return sign + "".join(parts)


def parse_duration(text: str, parameter: str = "every") -> timedelta:
    match = _DURATION.fullmatch(text)
    if match is None:
        raise TimeSpecError(parameter, text, "expected a duration such as 30s, 5m, 1h or 1d")
    try:
        return int(match[1]) * _UNITS[match[2]]
    except OverflowError as exc:
        raise TimeSpecError(parameter, text, "duration too large") from exc


def parse_instant(text: str, now: datetime, parameter: str) -> datetime:
    """``text`` as an aware UTC datetime: ``now``, ``-<duration>`` or RFC 3339 with an offset."""
    if text == "now":
        return now
    if text.startswith("-"):
        try:
            return now - parse_duration(text[1:], parameter)
        except OverflowError as exc:
            raise TimeSpecError(parameter, text, "reaches before year 1") from exc
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimeSpecError(
            parameter, text, "expected RFC 3339 (2026-05-01T12:00:00Z), now or -1h"
        ) from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise TimeSpecError(parameter, text, "RFC 3339 needs a UTC offset, e.g. Z or +02:00")
    return ts.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime


def resolve_window(
    start: str | None,
    end: str | None,
    *,
    now: datetime,
    default_range: timedelta,
    max_range: timedelta,
) -> Window:
    """``[start, end)`` from the parameters: end defaults to now, start to end - default_range."""
    end_ts = parse_instant(end, now, "end") if end is not None else now
    start_ts = parse_instant(start, now, "start") if start is not None else end_ts - default_range
    for name, ts in (("start", start_ts), ("end", end_ts)):
        if not TS_MIN <= ts <= TS_MAX:
            raise TimeSpecError(name, ts.isoformat(), "outside 1677-09-22..2262-04-11")
    if start_ts >= end_ts:
        raise TimeSpecError("start", start, "must be before end")
    if end_ts - start_ts > max_range:
        raise TimeSpecError(
            "start",
            start,
            f"the range {format_duration(end_ts - start_ts)} exceeds the maximum of "
            f"{format_duration(max_range)}; "
            "narrow start/end or page through several requests",
        )
    return Window(start_ts, end_ts)
