"""What a session computed again writes (pure): nothing when it did not change, its point, the
old point again as ``superseded`` when its key moved, and whether the point must be dropped
first (docs/design.md#sessions)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

from sessions import queries
from sessions.compute import Session

log = logging.getLogger(__name__)

NS: Final = 1_000_000_000
#: Fields a rewritten point cannot lose by being written again (InfluxDB merges fields).
OPTIONAL: Final = (
    "ended_at_ns",
    "meter_start_wh",
    "meter_stop_wh",
    "energy_wh",
    "max_power_w",
    "first_seq",
    "last_seq",
)


def points_to_write(
    old: Session | None, new: Session | None, now: int, silence: int
) -> list[tuple[Session, bool]]:
    """The points to write for a session computed again (each with whether its key must be
    dropped first): none when nothing changed."""
    if new is None:
        # No reading left (raw retention, or deleted): a stored active session ends by silence.
        if old is not None and old.state == "active" and now - old.last_reading_at_ns >= silence:
            ended = dataclasses.replace(
                old,
                state="ended",
                end_cause="silence",
                ended_at_ns=old.last_reading_at_ns,
                duration_s=max(0, old.last_reading_at_ns - old.started_at_ns) / NS,
                computed_at_ns=now,
            )
            return [(ended, False)]
        return []
    if old is None:
        return [(new, False)]
    if new.readings < old.readings:
        # Readings only come (a replay overwrites itself): fewer means the raw readings were
        # dropped (retention) or deleted: the stored session is the better record.
        log.warning(
            "session %s of %s: %d readings left of %d stored; kept as stored",
            new.transaction_id,
            new.charger_id,
            new.readings,
            old.readings,
        )
        return []
    if new.same_as(old):
        return []
    if new.key != old.key:
        return [
            (dataclasses.replace(old, state="superseded", computed_at_ns=now), False),
            (new, False),
        ]
    lost = any(getattr(old, f) is not None and getattr(new, f) is None for f in OPTIONAL)
    return [(new, lost)]


def delete_statement(s: Session) -> str:
    return queries.delete_session_point_query(
        s.charger_id, s.gateway_id, s.evse_id, s.connector_id, s.started_at_ns
    )
