"""Rollup rows (InfluxQL answers) -> line protocol. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import orjson

from telemetry_common.influx_query import Series
from telemetry_common.storage import TAG_KEYS

_TAG_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\\": "\\\\"})
_STRING_ESCAPES: Final = str.maketrans({'"': '\\"', "\\": "\\\\"})
#: Columns of a rollup row that are not ``{key}_{agg}`` floats.
SPECIAL: Final = ("time", "count", "status_last")
_SORTED_TAGS: Final = tuple(sorted(TAG_KEYS))


def rollup_lines(measurement: str, series: Iterable[Series]) -> Iterator[str]:
    """One line per row (bucket) of each series of a ``rollup_query`` answer (times in ns):
    the series' tags (empty ones left out), ``count``, ``status_last`` and every non-null
    ``{key}_{agg}``; a row that counted no reading is left out.

    The hot loop of the job (one row per bucket and series, ~30 columns): the aggregates go out
    in JSON's form (a float, or an integral number, which line protocol reads as a float
    without the ``i`` suffix; JSON has no NaN or infinity)."""
    layouts: dict[
        tuple[str, ...], tuple[int, int, int | None, list[int], list[str], list[str]]
    ] = {}
    for s in series:
        tags = "".join(
            f",{k}={s.tags[k].translate(_TAG_ESCAPES)}" for k in _SORTED_TAGS if s.tags.get(k)
        )
        head = measurement + tags + " "
        # Every series of an answer has the same columns: their layout is worked out once.
        key = tuple(s.columns)
        layout = layouts.get(key)
        if layout is None:
            layout = layouts[key] = _layout(s.columns)
        t, n, st, indices, prefixes, suffixes = layout
        for row in s.values:
            count = row[n]
            if not count:
                continue
            # The numbers formatted by orjson in one call (shortest round-trip form, e.g.
            # 1e+16, which line protocol reads), a few times faster than repr() each.
            numbers = orjson.dumps([row[i] for i in indices])[1:-1].decode().split(",")
            fields = [
                p + v + x
                for p, v, x in zip(prefixes, numbers, suffixes, strict=True)
                if v != "null"
            ]
            fields.append(f"count={int(count)}i")
            if st is not None and row[st] is not None:
                fields.append('status_last="' + str(row[st]).translate(_STRING_ESCAPES) + '"')
            yield f"{head}{','.join(fields)} {int(row[t])}"


def _layout(
    columns: list[str],
) -> tuple[int, int, int | None, list[int], list[str], list[str]]:
    """Where time, count and status_last are, and the aggregates' indices, ``name=`` and
    suffix (``i``: a key's ``_count`` is an integer field, as ``SELECT ... INTO`` writes it)."""
    indices = [i for i, name in enumerate(columns) if name not in SPECIAL]
    return (
        columns.index("time"),
        columns.index("count"),
        columns.index("status_last") if "status_last" in columns else None,
        indices,
        [columns[i] + "=" for i in indices],
        ["i" if columns[i].endswith("_count") else "" for i in indices],
    )


def state_line(
    measurement: str, done_until_ns: int, at_ns: int, field: str = "done_until_ns"
) -> str:
    """One of the job's state fields (``done_until_ns`` its progress, ``marks_until_ns`` the
    late marks taken) at time ``at_ns`` (fields of one time merge into one point)."""
    return f"{measurement} {field}={int(done_until_ns)}i {int(at_ns)}"
