"""Readings -> InfluxDB line protocol (docs/design.md schema), built by hand: 3-4x faster than
``influxdb_client.Point`` (4.4 vs 15.9 us per line, measured). Ids and value keys are
allow-listed by the schema, so tags and field keys need no escaping, and ``status`` is one of a
fixed set of plain words."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Final, get_args

import orjson

from telemetry_common.schema import ReadingRow, Status
from telemetry_common.storage import MEASUREMENT

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def ts_ns(ts: datetime) -> int:
    """Exact integer nanoseconds since the epoch (no float rounding)."""
    return (ts - _EPOCH) // _MICROSECOND * 1000


def ts_ns_all(rows: Iterable[ReadingRow]) -> list[int]:
    """:func:`ts_ns` of each row's ``ts`` (inlined: the call costs as much as the arithmetic)."""
    return [(r["ts"] - _EPOCH) // _MICROSECOND * 1000 for r in rows]


def ns_to_datetime(ns: int) -> datetime:
    """The inverse of :func:`ts_ns` (to the microsecond, datetime's resolution)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


#: The status field and its separator, per status (a fixed set; JSON-quoted = line-quoted).
_STATUS_FIELD: Final = {None: ""} | {s: f'status="{s}",' for s in get_args(Status)}


@functools.lru_cache(maxsize=65_536)
def _series(charger_id: str, connector_id: int, evse_id: int, gateway_id: str) -> str:
    """Measurement and tags (sorted by key, as InfluxDB stores them), the same for every point
    of one connector: built once per series, not per reading."""
    return (
        f"{MEASUREMENT},charger_id={charger_id},connector_id={connector_id},"
        f"evse_id={evse_id},gateway_id={gateway_id} "
    )


def _tx_fields(r: ReadingRow) -> str:
    """The transaction fields of a reading, each followed by a comma ("" without a transaction).
    Ids, events and hashes are allow-listed (``[A-Za-z0-9._-]``, hex): no escaping needed."""
    tx = r["transaction_id"]
    if tx is None:
        return ""
    out = f'transaction_id="{tx}",'
    if r["tx_event"] is not None:
        out += f'tx_event="{r["tx_event"]}",'
    if r["stop_reason"] is not None:
        out += f'stop_reason="{r["stop_reason"]}",'
    if r["id_tag_hash"] is not None:
        out += f'id_tag_hash="{r["id_tag_hash"]}",'
    return out


#: ``:`` becomes ``=``; ``"``, ``[`` and ``]`` are deleted (one pass over the bytes).
_JSON_TO_FIELDS: Final = (bytes.maketrans(b":", b"="), b'"[]')


def _value_fields(values: list[dict[str, float]]) -> list[str]:
    """``k=v,k=v`` per dict, from one orjson rendering of them all: value keys are
    ``[a-z0-9_]`` (no quote, colon, brace or comma to confuse), floats are written
    shortest-exact (``7200.0``, ``1e-7``; a float field either way), and one Rust call for a
    whole message beats a ``repr`` per value 3-4x. ``[{a:1},{},{b:2}]`` -> ``a=1},{},{b=2``
    -> ``["a=1", "", "b=2"]``."""
    return orjson.dumps(values).translate(*_JSON_TO_FIELDS).decode()[1:-1].split("},{")


#: Each reading's ``values`` object in a payload's JSON text.
_VALUES_JSON: Final = re.compile(rb'"values"\s*:\s*\{([^}]*)\}')
#: ``:`` becomes ``=``; quotes and JSON whitespace are deleted.
_JSON_TEXT_TO_FIELDS: Final = (bytes.maketrans(b":", b"="), b'" \t\r\n')


def value_fields_from_json(payload: bytes, rows: Sequence[ReadingRow]) -> list[str] | None:
    """The value fields of every reading of ``payload`` straight from its JSON text, or None.

    For a payload whose readings all validated as ``rows``: value keys are ``[a-z0-9_]`` and
    values are JSON numbers, which line protocol reads as the same floats, so the text needs
    only its quotes and whitespace removed and ``:`` made ``=``; no float is rendered again.
    None when the text could say something else than what was validated (an escape sequence,
    a duplicate key): the caller renders the rows instead."""
    if b"\\" in payload:
        return None
    found = _VALUES_JSON.findall(payload)
    if len(found) != len(rows):
        return None
    blob = b"}".join(found).translate(*_JSON_TEXT_TO_FIELDS)
    if blob.count(b"=") != sum(map(len, map(itemgetter("values"), rows))):
        return None
    return blob.decode().split("}")


def to_lines(
    gateway_id: str,
    rows: Sequence[ReadingRow],
    nss: Sequence[int],
    value_fields: Sequence[str] | None = None,
    epoch: str | None = None,
) -> list[str]:
    """One point per reading (``nss``: each one's ``ts_ns``; ``value_fields``: each one's
    ``k=v,...`` when the caller has them); a point's key (measurement, tags, time) makes a
    replayed reading overwrite itself. ``seq`` is always there, so a reading without values (a
    status change) is still a valid point; ``epoch`` (the batch's, 16 hex digits: no escaping)
    is a string field when given, and so are the transaction fields (:func:`_tx_fields`)."""
    if not rows:
        return []
    if value_fields is None:
        value_fields = _value_fields([r["values"] for r in rows])
    series = _series
    status = _STATUS_FIELD
    of_epoch = f'epoch="{epoch}",' if epoch is not None else ""
    tx = _tx_fields
    return [
        f"{series(r['charger_id'], r['connector_id'], r['evse_id'], gateway_id)}"
        f"{vf}{',' if vf else ''}{status[r['status']]}{of_epoch}"
        f"{tx(r) if r['transaction_id'] is not None else ''}seq={r['seq']}i {ns}"
        for r, vf, ns in zip(rows, value_fields, nss, strict=True)
    ]
