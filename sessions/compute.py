"""A session from its readings, and its point (docs/design.md#sessions). Pure: no I/O, no clock.

:func:`compute` holds every rule of the contract; the job (:mod:`sessions.job`) only gathers
what it needs from InfluxDB: the readings of one (charger, transaction), whether the connector
has a newer reading without it, and the gateway's confirmed seq gaps.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from telemetry_common.energy import register_difference
from telemetry_common.influx_write import field_str, tag_str
from telemetry_common.schema import IN_TRANSACTION
from telemetry_common.storage import SESSION_MEASUREMENT

State = Literal["active", "ended", "superseded"]
EndCause = Literal["stop", "next", "silence", ""]
#: The flags in the order they are written (docs/design.md#sessions).
FLAGS: Final = ("register_backwards", "seq_gap", "energy_suspect", "no_energy", "connector_changed")


def ends_session(transaction_id: str | None, status: str | None, own: str) -> bool:
    """Whether a reading of the connector newer than a session's newest ends it (``next``): it
    belongs to another transaction, or to none and its status is not one of IN_TRANSACTION."""
    if transaction_id:
        return transaction_id != own
    return status not in IN_TRANSACTION


class Row(NamedTuple):
    """One stored reading of a transaction, as the job reads it."""

    ts_ns: int
    seq: int | None
    epoch: str | None
    energy_wh: float | None
    power_w: float | None
    energy_suspect: float | None
    tx_event: str | None
    stop_reason: str | None
    id_tag_hash: str | None
    gateway_id: str
    evse_id: int
    connector_id: int


class SeqGap(NamedTuple):
    """A gateway's confirmed missing seqs: ``[first, last]`` (the envelope a bridge stores in
    ``seqgaps``) of ``epoch`` (None: the gateway's lifelong numbering, or not known)."""

    first: int
    last: int
    epoch: str | None


@dataclass(frozen=True)
class Session:
    """One point of measurement ``sessions``: every field of the contract."""

    charger_id: str
    gateway_id: str
    evse_id: int
    connector_id: int
    transaction_id: str
    state: State
    started_at_ns: int
    ended_at_ns: int | None
    end_cause: EndCause
    meter_start_wh: float | None
    meter_stop_wh: float | None
    energy_wh: float | None
    max_power_w: float | None
    duration_s: float
    stop_reason: str
    id_tag_hash: str
    readings: int
    flags: tuple[str, ...]
    first_seq: int | None
    last_seq: int | None
    last_reading_at_ns: int
    computed_at_ns: int

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        """The point's key besides the measurement: its tags and time."""
        return (
            self.charger_id,
            self.gateway_id,
            self.evse_id,
            self.connector_id,
            self.started_at_ns,
        )

    def same_as(self, other: Session | None) -> bool:
        """Equal but for ``computed_at`` (nothing to write again)."""
        return other is not None and _content(self) == _content(other)


def _content(s: Session) -> tuple[object, ...]:
    return tuple(getattr(s, f) for f in s.__dataclass_fields__ if f != "computed_at_ns")


def compute(
    charger_id: str,
    transaction_id: str,
    rows: Sequence[Row],
    *,
    now_ns: int,
    silence_ns: int,
    newer_on_connector: bool,
    gaps: Sequence[SeqGap] = (),
    prior: Session | None = None,
) -> Session | None:
    """The session of ``rows`` (the readings InfluxDB holds of one charger and transaction, in
    any order); None without readings. With ``prior`` (an active session computed from the
    readings before): ``rows`` are the readings newer than its newest, none of them
    ``started``, and the result is the session of all of them (:func:`_extended`).

    - ``started_at``: the ``started`` reading's ts, else the oldest reading's;
      ``meter_start_wh`` that reading's ``energy_wh``, else the oldest ``energy_wh`` by ts.
    - ended by the ``ended`` reading (``stop``), else at the newest reading once the connector
      has a newer reading that ends it (:func:`ends_session`; ``newer_on_connector``: ``next``)
      or once the newest reading is ``silence_ns`` old at ``now_ns`` (``silence``); else active.
    - ``meter_stop_wh``: the ``ended`` reading's ``energy_wh``, else the newest ``energy_wh``;
      ``energy_wh`` = ``meter_stop_wh`` - ``meter_start_wh`` (OCPP: meterStop - meterStart).
    - tags: the first reading's (by ts); ``connector_changed`` when they name more than one
      connector; ``seq_gap`` when one of ``gaps`` (the session's gateway's) overlaps the
      session's seqs of its epoch.
    """
    if prior is not None:
        return _extended(prior, rows, now_ns, silence_ns, newer_on_connector, gaps)
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: (r.ts_ns, r.seq or 0))
    first, newest = rows[0], rows[-1]
    started = next((r for r in rows if r.tx_event == "started"), None)
    ended = next((r for r in reversed(rows) if r.tx_event == "ended"), None)
    energies = [r.energy_wh for r in rows if r.energy_wh is not None]

    start_row = started or first
    meter_start = start_row.energy_wh if start_row.energy_wh is not None else _at(energies, 0)
    meter_stop = (
        ended.energy_wh if ended is not None and ended.energy_wh is not None else _at(energies, -1)
    )
    energy = (
        None
        if meter_start is None or meter_stop is None
        else register_difference(meter_start, meter_stop)
    )

    end_cause, ended_at = _end(ended, newest.ts_ns, now_ns, silence_ns, newer_on_connector)
    started_at = start_row.ts_ns
    until = ended_at if ended_at is not None else newest.ts_ns

    powers = [r.power_w for r in rows if r.power_w is not None]
    seqs = [r.seq for r in rows if r.seq is not None]
    stop_reason = (ended.stop_reason if ended is not None else None) or next(
        (r.stop_reason for r in reversed(rows) if r.stop_reason), ""
    )
    id_tag = (started.id_tag_hash if started is not None else None) or next(
        (r.id_tag_hash for r in rows if r.id_tag_hash), ""
    )
    return Session(
        charger_id=charger_id,
        gateway_id=first.gateway_id,
        evse_id=first.evse_id,
        connector_id=first.connector_id,
        transaction_id=transaction_id,
        state="ended" if ended_at is not None else "active",
        started_at_ns=started_at,
        ended_at_ns=ended_at,
        end_cause=end_cause,
        meter_start_wh=meter_start,
        meter_stop_wh=meter_stop,
        energy_wh=energy,
        max_power_w=max(powers) if powers else None,
        duration_s=max(0, until - started_at) / 1e9,
        stop_reason=stop_reason,
        id_tag_hash=id_tag,
        readings=len(rows),
        flags=_flags(rows, energies, gaps),
        first_seq=min(seqs) if seqs else None,
        last_seq=max(seqs) if seqs else None,
        last_reading_at_ns=newest.ts_ns,
        computed_at_ns=now_ns,
    )


def _end(
    ended: Row | None, newest_ns: int, now_ns: int, silence_ns: int, newer: bool
) -> tuple[EndCause, int | None]:
    if ended is not None:
        return "stop", ended.ts_ns
    if newer:
        return "next", newest_ns
    if now_ns - newest_ns >= silence_ns:
        return "silence", newest_ns
    return "", None


def _extended(
    prior: Session,
    rows: Sequence[Row],
    now_ns: int,
    silence_ns: int,
    newer: bool,
    gaps: Sequence[SeqGap],
) -> Session:
    """``prior`` (active) carried on with ``rows``, all newer than its newest reading and none
    ``started``: the same session :func:`compute` gives from all the readings (its flags
    ``seq_gap`` aside, which it keeps once set and otherwise checks against the new readings'
    seqs and ``prior``'s seq range). An active session's ``meter_stop_wh`` is its newest
    register, so the register falling is seen across the two."""
    if prior.state != "active":
        raise ValueError(f"only an active session is carried on, not a {prior.state} one")
    rows = sorted(rows, key=lambda r: (r.ts_ns, r.seq or 0))
    if rows and rows[0].ts_ns <= prior.last_reading_at_ns:
        raise ValueError("the readings must all be newer than the session's newest")
    if any(r.tx_event == "started" for r in rows):
        raise ValueError("a started reading moves the session's start: compute it whole")
    ended = next((r for r in reversed(rows) if r.tx_event == "ended"), None)
    energies = [r.energy_wh for r in rows if r.energy_wh is not None]
    meter_start = prior.meter_start_wh if prior.meter_start_wh is not None else _at(energies, 0)
    if ended is not None and ended.energy_wh is not None:
        meter_stop: float | None = ended.energy_wh
    else:
        meter_stop = _at(energies, -1) if energies else prior.meter_stop_wh
    energy = (
        None
        if meter_start is None or meter_stop is None
        else register_difference(meter_start, meter_stop)
    )
    newest_ns = rows[-1].ts_ns if rows else prior.last_reading_at_ns
    end_cause, ended_at = _end(ended, newest_ns, now_ns, silence_ns, newer)
    until = ended_at if ended_at is not None else newest_ns
    powers = [r.power_w for r in rows if r.power_w is not None]
    if prior.max_power_w is not None:
        powers.append(prior.max_power_w)
    seqs = [r.seq for r in rows if r.seq is not None]
    seqs += [q for q in (prior.first_seq, prior.last_seq) if q is not None]
    found = set(prior.flags) - {"no_energy"}
    chain = ([prior.meter_stop_wh] if prior.meter_stop_wh is not None else []) + energies
    if any(b < a for a, b in itertools.pairwise(chain)):
        found.add("register_backwards")
    epochs = {r.epoch for r in rows}
    for g in gaps:
        in_prior = (
            prior.first_seq is not None
            and prior.last_seq is not None
            and g.first <= prior.last_seq
            and prior.first_seq <= g.last
            and (g.epoch is None or g.epoch in epochs)
        )
        if in_prior or _overlaps(g, rows):
            found.add("seq_gap")
    if any(r.energy_suspect for r in rows):
        found.add("energy_suspect")
    if meter_start is None and meter_stop is None:
        found.add("no_energy")
    if any((r.evse_id, r.connector_id) != (prior.evse_id, prior.connector_id) for r in rows):
        found.add("connector_changed")
    stop_reason = (ended.stop_reason if ended is not None else None) or next(
        (r.stop_reason for r in reversed(rows) if r.stop_reason), prior.stop_reason
    )
    id_tag = prior.id_tag_hash or next((r.id_tag_hash for r in rows if r.id_tag_hash), "")
    return dataclasses.replace(
        prior,
        state="ended" if ended_at is not None else "active",
        ended_at_ns=ended_at,
        end_cause=end_cause,
        meter_start_wh=meter_start,
        meter_stop_wh=meter_stop,
        energy_wh=energy,
        max_power_w=max(powers) if powers else None,
        duration_s=max(0, until - prior.started_at_ns) / 1e9,
        stop_reason=stop_reason,
        id_tag_hash=id_tag,
        readings=prior.readings + len(rows),
        flags=tuple(f for f in FLAGS if f in found),
        first_seq=min(seqs) if seqs else None,
        last_seq=max(seqs) if seqs else None,
        last_reading_at_ns=newest_ns,
        computed_at_ns=now_ns,
    )


def _at(values: list[float], index: int) -> float | None:
    return values[index] if values else None


def _flags(rows: Sequence[Row], energies: list[float], gaps: Sequence[SeqGap]) -> tuple[str, ...]:
    found = set()
    if any(b < a for a, b in itertools.pairwise(energies)):
        found.add("register_backwards")
    if any(_overlaps(g, rows) for g in gaps):
        found.add("seq_gap")
    if any(r.energy_suspect for r in rows):
        found.add("energy_suspect")
    if not energies:
        found.add("no_energy")
    if len({(r.evse_id, r.connector_id) for r in rows}) > 1:
        found.add("connector_changed")
    return tuple(f for f in FLAGS if f in found)


def _overlaps(gap: SeqGap, rows: Sequence[Row]) -> bool:
    """Whether ``gap`` lies (partly) within the seqs of the session's readings of its epoch."""
    seqs = [
        r.seq for r in rows if r.seq is not None and (gap.epoch is None or r.epoch == gap.epoch)
    ]
    return bool(seqs) and gap.first <= max(seqs) and min(seqs) <= gap.last


def to_line(s: Session) -> str:
    """The session's point (line protocol, ns): tags as the readings, time = ``started_at``;
    optional fields (``ended_at``, the meters, ``max_power_w``, the seqs) left out when None."""
    tags = (
        f"{SESSION_MEASUREMENT},charger_id={tag_str(s.charger_id)},connector_id={s.connector_id},"
        f"evse_id={s.evse_id},gateway_id={tag_str(s.gateway_id)}"
    )
    fields = [
        f"transaction_id={field_str(s.transaction_id)}",
        f"state={field_str(s.state)}",
        f"end_cause={field_str(s.end_cause)}",
    ]
    optional_floats = (
        ("meter_start_wh", s.meter_start_wh),
        ("meter_stop_wh", s.meter_stop_wh),
        ("energy_wh", s.energy_wh),
        ("max_power_w", s.max_power_w),
    )
    fields += [f"{k}={float(v)!r}" for k, v in optional_floats if v is not None]
    optional_ints = (
        ("ended_at", s.ended_at_ns),
        ("first_seq", s.first_seq),
        ("last_seq", s.last_seq),
    )
    fields += [f"{k}={v}i" for k, v in optional_ints if v is not None]
    fields += [
        f"duration_s={float(s.duration_s)!r}",
        f"stop_reason={field_str(s.stop_reason)}",
        f"id_tag_hash={field_str(s.id_tag_hash)}",
        f"readings={s.readings}i",
        f"flags={field_str(','.join(s.flags))}",
        f"last_reading_at={s.last_reading_at_ns}i",
        f"computed_at={s.computed_at_ns}i",
    ]
    return f"{tags} {','.join(fields)} {s.started_at_ns}"
