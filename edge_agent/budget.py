"""The outbox's budget policy: which readings go when the outbox is full.

Rule (applied inside the transaction that made the outbox too big, so it is atomic with it):
while the pending rows exceed ``max_rows`` or their bytes exceed ``max_bytes``, delete the
**oldest non-energy reading** (no ``energy_wh``); when none is left, delete the **oldest energy
reading**. New captures count like stored ones, so with only energy readings stored a new
non-energy capture is the first to go (it is refused in effect), and energy readings go last,
oldest first: the energy register is cumulative, so the newest reading kept still carries the
billed total. Every deletion is counted by reason in the ``dropped`` table and its seq listed
(:mod:`edge_agent.drops`), except a row whose batch awaits its PUBACK: the policy deletes it
all the same (its place in the order does not change), but it is counted only if that batch
fails; if the PUBACK comes, the reading was delivered and is not counted at all.

A disk-full error (SQLITE_FULL, which SQLite also reports for ENOSPC) applies the same rule
under the ``disk_full_*`` reasons; see :mod:`edge_agent.outbox`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final

from edge_agent.drops import SeqRecorder, count_drop, defer

__all__ = ["REASONS", "Budget", "count_drop", "drop_oldest", "is_energy", "trim_parked"]

#: Every reason a reading can leave the outbox without a PUBACK.
REASONS: Final = (
    "budget_non_energy",
    "budget_energy",
    "disk_full_non_energy",
    "disk_full_energy",
    "disk_full_refused",
    "seq_exhausted_refused",
    "parked_overflow",
    "purged",
)
ENERGY_KEY: Final = b'"energy_wh":'


@dataclass(frozen=True, slots=True)
class Budget:
    max_rows: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024
    max_parked_rows: int = 100_000
    #: Runs of dropped seqs listed (``outbox dropped``); the oldest are forgotten beyond.
    max_dropped_runs: int = 100_000


def is_energy(body: bytes) -> bool:
    """True if a stored body carries ``energy_wh`` (ids cannot contain quotes and the quotes of
    ``charger_info`` texts are escaped, so only a value key can match)."""
    return ENERGY_KEY in body


def drop_oldest(
    db: sqlite3.Connection,
    rows_excess: int,
    bytes_excess: int,
    cause: str,
    *,
    in_flight: AbstractSet[int] = frozenset(),
    max_runs: int = 100_000,
) -> tuple[int, int]:
    """Delete the oldest non-energy rows, then the oldest energy rows, until at least
    ``rows_excess`` rows and ``bytes_excess`` bytes are gone (or nothing is left).

    Counts them as ``{cause}_non_energy`` / ``{cause}_energy`` and lists their seqs, except the
    rows in ``in_flight`` (their batch awaits its PUBACK): those are deferred
    (:func:`edge_agent.drops.defer`), counted only if the batch fails. Keeps ``totals`` right
    and returns (rows, bytes) deleted. Runs in the caller's transaction. Reads rows through a
    cursor, so memory does not depend on how much is deleted.
    """
    gone_rows = gone_bytes = 0
    recorder = SeqRecorder(db, max_runs)
    for energy, label in ((0, "non_energy"), (1, "energy")):
        if gone_rows >= rows_excess and gone_bytes >= bytes_excess:
            break
        n = size = 0
        last: int | None = None
        deferred: list[int] = []
        # energy = 0 uses the partial index; energy = 1 is reached only once no non-energy row
        # is left, so the rowid scan meets energy rows at once.
        cur = db.execute(
            "SELECT seq, length(body) FROM outbox WHERE energy = ? ORDER BY seq", (energy,)
        )
        for seq, length in cur:
            n += 1
            size += length
            last = seq
            if seq in in_flight:
                deferred.append(seq)
            else:
                recorder.add(seq)
            if gone_rows + n >= rows_excess and gone_bytes + size >= bytes_excess:
                break
        cur.close()
        if last is None:
            continue
        db.execute("DELETE FROM outbox WHERE energy = ? AND seq <= ?", (energy, last))
        reason = f"{cause}_{label}"
        count_drop(db, reason, n - len(deferred))
        defer(db, deferred, reason)
        recorder.flush()
        gone_rows += n
        gone_bytes += size
    if gone_rows:
        db.execute(
            "UPDATE totals SET rows = rows - ?, bytes = bytes - ? WHERE id = 1",
            (gone_rows, gone_bytes),
        )
    return gone_rows, gone_bytes


def trim_parked(db: sqlite3.Connection, max_parked_rows: int, max_runs: int = 100_000) -> int:
    """Keep at most ``max_parked_rows`` parked rows (drop the oldest); returns how many went."""
    (parked,) = db.execute("SELECT count(*) FROM parked").fetchone()
    excess = int(parked) - max_parked_rows
    if excess <= 0:
        return 0
    gone = db.execute(
        "DELETE FROM parked WHERE seq IN (SELECT seq FROM parked ORDER BY seq LIMIT ?) "
        "RETURNING seq",
        (excess,),
    ).fetchall()
    recorder = SeqRecorder(db, max_runs)
    for seq in sorted(int(s) for (s,) in gone):  # RETURNING has no order
        recorder.add(seq)
    recorder.flush()
    count_drop(db, "parked_overflow", excess)
    return excess
