"""Rollup rows (InfluxQL answers) -> line protocol. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Final

from telemetry_common.influx_query import Series
from telemetry_common.storage import TAG_KEYS

_TAG_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_STRING_ESCAPES: Final = str.maketrans({'"': '\\"', "\\": "\\\\"})
#: Columns of a rollup row that are not ``{key}_{agg}`` floats.
SPECIAL: Final = ("time", "count", "status_last")


def _field_value(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name == "count":
        return f"{int(value)}i"
    if name == "status_last":
        return '"' + str(value).translate(_STRING_ESCAPES) + '"'
    number = float(value)
    return repr(number) if math.isfinite(number) else None


def rollup_lines(measurement: str, series: Iterable[Series]) -> Iterator[str]:
    """One line per row (bucket) of each series of a ``rollup_query`` answer (times in ns):
    the series' tags (empty ones left out), ``count``, ``status_last`` and every non-null
    ``{key}_{agg}``; a row that counted no reading is left out."""
    for s in series:
        tags = "".join(
            f",{k}={s.tags[k].translate(_TAG_ESCAPES)}" for k in sorted(TAG_KEYS) if s.tags.get(k)
        )
        head = measurement + tags + " "
        for row in s.values:
            values = dict(zip(s.columns, row, strict=True))
            if not values.get("count"):
                continue
            fields = []
            for name in sorted(values):
                if name == "time":
                    continue
                text = _field_value(name, values[name])
                if text is not None:
                    fields.append(f"{name}={text}")
            yield f"{head}{','.join(fields)} {int(values['time'])}"


def state_line(measurement: str, done_until_ns: int, at_ns: int) -> str:
    """The job's progress point: ``done_until_ns`` at time ``at_ns``."""
    return f"{measurement} done_until_ns={int(done_until_ns)}i {int(at_ns)}"
