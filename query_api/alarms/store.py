"""An alarm occurrence, its record in InfluxDB and its retained MQTT message (pure, but for the
two read helpers).

One point per occurrence in measurement ``alarms`` of the retention policy ``keep`` (INF;
telemetry_common/storage.py): tags ``kind``
and ``subject``, time = when it was raised; fields ``id``, ``severity``, ``detail``, ``active``
(true). Clearing writes ``active=false`` and ``cleared_at`` (ns) onto the same point (same series
and time: InfluxDB merges the fields), so the history of an occurrence is one row, and the active
ones are those with ``active = true``. The retained message on ``{root}/alarms/{kind}/{subject}``
is the JSON of :meth:`Alarm.message`; an empty retained message clears it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from query_api.readings import from_epoch_ns
from telemetry_common import influxql
from telemetry_common.errors import TopicError
from telemetry_common.influx_query import InfluxError, InfluxQL
from telemetry_common.influx_write import field_str
from telemetry_common.schema import format_ts
from telemetry_common.storage import ALARM_MEASUREMENT
from telemetry_common.topics import check_alarm

#: Most active alarms loaded at start.
MAX_ACTIVE: int = 100_000
#: Longest ``detail`` kept (stored and published alike).
MAX_DETAIL: int = 2048


def _ns(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1_000


def alarm_id(kind: str, subject: str, since: datetime) -> str:
    """Stable per occurrence: the same alarm written twice (a retry) keeps its id."""
    text = f"{kind}/{subject}/{_ns(since)}".encode()
    return hashlib.sha256(text).hexdigest()[:20]


@dataclass(slots=True)
class Alarm:
    id: str
    kind: str
    subject: str
    since: datetime
    severity: str
    detail: str
    cleared_at: datetime | None = None

    @classmethod
    def raised(cls, kind: str, subject: str, since: datetime, severity: str, detail: str) -> Alarm:
        check_alarm(kind, subject)
        since = since.replace(microsecond=since.microsecond // 1000 * 1000)  # as in messages
        ident = alarm_id(kind, subject, since)
        return cls(ident, kind, subject, since, severity, detail[:MAX_DETAIL])

    def _series(self) -> str:
        return f"{ALARM_MEASUREMENT},kind={self.kind},subject={self.subject}"

    def raise_line(self) -> str:
        fields = (
            f"id={field_str(self.id)},severity={field_str(self.severity)},"
            f"detail={field_str(self.detail[:MAX_DETAIL])},active=true"
        )
        return f"{self._series()} {fields} {_ns(self.since)}"

    def clear_line(self, at: datetime) -> str:
        return f"{self._series()} active=false,cleared_at={_ns(at)}i {_ns(self.since)}"

    def message(self) -> bytes:
        """The retained payload (docs/alarms.md)."""
        return orjson.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "subject": self.subject,
                "since": format_ts(self.since),
                "severity": self.severity,
                "detail": self.detail,
            }
        )

    def item(self) -> dict[str, Any]:
        """The ``/v1/alarms`` item."""
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "since": format_ts(self.since),
            "cleared_at": format_ts(self.cleared_at) if self.cleared_at is not None else None,
            "severity": self.severity,
            "detail": self.detail,
        }


def from_row(row: dict[str, Any]) -> Alarm | None:
    """An ``alarms`` row (``SELECT *``, times in ns); None if it is not a whole one."""
    kind, subject, ident = row.get("kind"), row.get("subject"), row.get("id")
    if not isinstance(kind, str) or not isinstance(subject, str) or not isinstance(ident, str):
        return None
    try:
        check_alarm(kind, subject)
    except TopicError:
        return None
    cleared = row.get("cleared_at")
    return Alarm(
        id=ident,
        kind=kind,
        subject=subject,
        since=from_epoch_ns(int(row["time"])),
        severity=str(row.get("severity") or "warning"),
        detail=str(row.get("detail") or ""),
        cleared_at=from_epoch_ns(int(cleared)) if isinstance(cleared, int | float) else None,
    )


def from_message(kind: str, subject: str, payload: bytes) -> Alarm | None:
    """A retained alarm message; None if it is not one of ours for ``kind``/``subject``."""
    try:
        doc = orjson.loads(payload)
        since = datetime.fromisoformat(doc["since"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if doc.get("kind") != kind or doc.get("subject") != subject or since.tzinfo is None:
        return None
    ident = doc.get("id")
    return Alarm(
        id=ident if isinstance(ident, str) and ident else alarm_id(kind, subject, since),
        kind=kind,
        subject=subject,
        since=since,
        severity=str(doc.get("severity") or "warning"),
        detail=str(doc.get("detail") or ""),
    )


async def read_alarms(
    influx: InfluxQL,
    start: datetime,
    end: datetime,
    limit: int,
    *,
    active_only: bool = False,
    kind: str | None = None,
    subject: str | None = None,
) -> list[Alarm]:
    """Occurrences raised in ``[start, end)``, newest first (InfluxQL errors propagate, but for
    a missing retention policy ``keep``: no alarm was ever stored)."""
    q = influxql.alarms_query(
        start, end, limit, active_only=active_only, kind=kind, subject=subject
    )
    try:
        series = await influx.query(q)
    except InfluxError as exc:
        if "retention policy not found" in str(exc):
            return []
        raise
    alarms = [from_row(row) for s in series for row in s.rows()]
    return [a for a in alarms if a is not None]
