"""InfluxDB's answers to the sessions job's queries (:mod:`sessions.queries`) as the types of
:mod:`sessions.compute`: readings, confirmed gaps, stored session points, and a steady pass's
stretch of readings (:class:`Window`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sessions.compute import Row, SeqGap, Session, ends_session
from telemetry_common.influx_query import Series

Key = tuple[str, str]  # (charger_id, transaction_id)


@dataclass
class Window:
    """The readings of a steady pass's stretch (from ``start_ns`` on): those of each
    (charger, transaction), by ts, and each connector's (ts, transaction, status) to tell
    whether a session's connector has a newer reading that ends it."""

    start_ns: int
    sessions: dict[Key, list[Row]]
    connectors: dict[tuple[str, int, int], list[tuple[int, str | None, str | None]]]

    @classmethod
    def of(cls, start_ns: int, answer: Sequence[Series]) -> Window:
        sessions: dict[Key, list[Row]] = {}
        connectors: dict[tuple[str, int, int], list[tuple[int, str | None, str | None]]] = {}
        for s in answer:
            charger = s.tags.get("charger_id") or ""
            evse, connector = int(s.tags.get("evse_id") or 0), int(s.tags.get("connector_id") or 0)
            seen = connectors.setdefault((charger, evse, connector), [])
            for r in s.rows():
                row = row_of({**s.tags, **r})
                tx = r.get("transaction_id")
                status = r.get("status")
                seen.append(
                    (
                        row.ts_ns,
                        tx if isinstance(tx, str) and tx else None,
                        status if isinstance(status, str) else None,
                    )
                )
                if isinstance(tx, str) and tx:
                    sessions.setdefault((charger, tx), []).append(row)
        for rows in sessions.values():
            rows.sort(key=lambda r: (r.ts_ns, r.seq or 0))
        return cls(start_ns, sessions, connectors)

    def newer(self, charger: str, evse: int, connector: int, after_ns: int, tx: str) -> bool:
        """Whether the connector has a reading after ``after_ns`` that ends the session of ``tx``
        (:func:`sessions.compute.ends_session`)."""
        return any(
            t > after_ns and ends_session(other, status, tx)
            for t, other, status in self.connectors.get((charger, evse, connector), ())
        )


def ends(readings: Sequence[Series], in_transaction: Sequence[Series]) -> bool:
    """The answers to :func:`sessions.queries.newer_reading_queries`: a newer reading ends the
    session when one carries a transaction (another one), or when not all of them are of a
    status of IN_TRANSACTION (a reading of no status included)."""
    row = next((r for s in readings for r in s.rows()), {})
    inside = next((r for s in in_transaction for r in s.rows()), {})
    return bool(row.get("tx")) or int(row.get("n") or 0) > int(inside.get("n") or 0)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def row_of(r: dict[str, Any]) -> Row:
    """A reading as the queries return it (tags as columns) as a :class:`Row`."""
    return Row(
        ts_ns=int(r["time"]),
        seq=_opt_int(r.get("seq")),
        epoch=r.get("epoch"),
        energy_wh=_opt_float(r.get("energy_wh")),
        power_w=_opt_float(r.get("power_w")),
        energy_suspect=_opt_float(r.get("energy_suspect")),
        tx_event=r.get("tx_event"),
        stop_reason=r.get("stop_reason"),
        id_tag_hash=r.get("id_tag_hash"),
        gateway_id=str(r.get("gateway_id") or ""),
        evse_id=int(r.get("evse_id") or 0),
        connector_id=int(r.get("connector_id") or 0),
    )


def rows_of(answer: Sequence[Series]) -> list[Row]:
    out = [row_of(r) for s in answer for r in s.rows()]
    out.sort(key=lambda r: (r.ts_ns, r.seq or 0))
    return out


def gaps_of(answer: Sequence[Series]) -> list[SeqGap]:
    """The confirmed gaps the bridges' newest ``seqgaps`` points of a gateway still assert."""
    out = []
    for s in answer:
        for r in s.rows():
            if r.get("missing") and r.get("first") is not None and r.get("last") is not None:
                epoch = r.get("epoch")
                out.append(SeqGap(int(r["first"]), int(r["last"]), epoch or None))
    return out


def sessions_of(answer: Sequence[Series]) -> list[Session]:
    """Stored session points as records."""
    out = []
    for s in answer:
        for r in s.rows():
            flags = str(r.get("flags") or "")
            out.append(
                Session(
                    charger_id=str(r["charger_id"]),
                    gateway_id=str(r.get("gateway_id") or ""),
                    evse_id=int(r.get("evse_id") or 0),
                    connector_id=int(r.get("connector_id") or 0),
                    transaction_id=str(r["transaction_id"]),
                    state=r["state"],
                    started_at_ns=int(r["time"]),
                    # An active one's is stale (InfluxDB 2.x/3.x keep it: no DELETE).
                    ended_at_ns=_opt_int(r.get("ended_at")) if r["state"] != "active" else None,
                    end_cause=r.get("end_cause") or "",
                    meter_start_wh=_opt_float(r.get("meter_start_wh")),
                    meter_stop_wh=_opt_float(r.get("meter_stop_wh")),
                    energy_wh=_opt_float(r.get("energy_wh")),
                    max_power_w=_opt_float(r.get("max_power_w")),
                    duration_s=float(r.get("duration_s") or 0.0),
                    stop_reason=str(r.get("stop_reason") or ""),
                    id_tag_hash=str(r.get("id_tag_hash") or ""),
                    readings=int(r.get("readings") or 0),
                    flags=tuple(f for f in flags.split(",") if f),
                    first_seq=_opt_int(r.get("first_seq")),
                    last_seq=_opt_int(r.get("last_seq")),
                    last_reading_at_ns=int(r.get("last_reading_at") or 0),
                    computed_at_ns=int(r.get("computed_at") or 0),
                )
            )
    return out
