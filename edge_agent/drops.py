"""The record of readings that left the outbox without a PUBACK, kept in the outbox itself.

- ``dropped (reason, n)``: how many, by reason (:func:`count_drop`); counters that never go down.
- ``dropped_seqs (first_seq, last_seq)``: *which* seqs, as runs of consecutive seqs (a run is
  merged with its neighbours, whatever their reason). At most ``Budget.max_dropped_runs`` runs
  are kept; beyond, the oldest runs are forgotten and ``totals.unlisted`` counts the readings
  they held. ``totals.runs`` is the number of runs. (``disk_full_refused`` captures never got a
  seq, so they are counted but never listed.)
- ``dropped_in_flight (seq, reason)``: rows the budget deleted while the batch holding them
  awaited its PUBACK. They are not counted yet: if the PUBACK comes they were delivered after
  all and are forgotten; if the batch fails (no PUBACK, or refused) they are counted then, under
  the reason the budget gave. A process that dies meanwhile never learns the outcome: the next
  publisher counts them when it starts (:func:`settle_in_flight`), so a batch the broker did
  acknowledge just before a crash (or a lost PUBACK, whose batch the broker may hold) makes a
  rare over-count, never an under-count.

Every function runs in the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

_CHUNK: Final = 500


def count_drop(db: sqlite3.Connection, reason: str, n: int) -> None:
    if n > 0:
        db.execute(
            "INSERT INTO dropped (reason, n) VALUES (?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET n = n + excluded.n",
            (reason, n),
        )


def runs_of(seqs: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Runs ``(first, last)`` of consecutive seqs, for seqs given in ascending order."""
    first = last = -1
    for seq in seqs:
        if seq == last + 1 and first >= 0:
            last = seq
            continue
        if first >= 0:
            yield first, last
        first = last = seq
    if first >= 0:
        yield first, last


class SeqRecorder:
    """Collects dropped seqs (ascending) and writes them to ``dropped_seqs`` in chunks, so
    memory does not grow with the size of a drop."""

    def __init__(self, db: sqlite3.Connection, max_runs: int) -> None:
        self._db = db
        self._max_runs = max_runs
        self._runs: list[tuple[int, int]] = []

    def add(self, seq: int) -> None:
        runs = self._runs
        if runs and runs[-1][1] + 1 == seq:
            runs[-1] = (runs[-1][0], seq)
            return
        if len(runs) >= _CHUNK:
            self.flush()
        runs.append((seq, seq))

    def flush(self) -> None:
        if self._runs:
            add_runs(self._db, self._runs, self._max_runs)
            self._runs = []


def add_runs(db: sqlite3.Connection, runs: Sequence[tuple[int, int]], max_runs: int) -> None:
    """Add runs of dropped seqs, merged with the runs they touch or overlap."""
    delta = 0
    for first, last in runs:
        before = db.execute(
            "SELECT first_seq, last_seq FROM dropped_seqs WHERE first_seq < ? "
            "ORDER BY first_seq DESC LIMIT 1",
            (first,),
        ).fetchone()
        if before is not None and before[1] >= first - 1:
            first, last = before[0], max(last, before[1])
            db.execute("DELETE FROM dropped_seqs WHERE first_seq = ?", (first,))
            delta -= 1
        after = db.execute(
            "SELECT first_seq, last_seq FROM dropped_seqs WHERE first_seq >= ? AND first_seq <= ?",
            (first, last + 1),
        ).fetchall()
        for a_first, a_last in after:
            last = max(last, a_last)
            db.execute("DELETE FROM dropped_seqs WHERE first_seq = ?", (a_first,))
            delta -= 1
        db.execute("INSERT INTO dropped_seqs (first_seq, last_seq) VALUES (?, ?)", (first, last))
        delta += 1
    db.execute("UPDATE totals SET runs = runs + ? WHERE id = 1", (delta,))
    _trim_runs(db, max_runs)


def _trim_runs(db: sqlite3.Connection, max_runs: int) -> None:
    """Forget the oldest runs beyond ``max_runs`` (down to 90% of it, so this is rare)."""
    (runs,) = db.execute("SELECT runs FROM totals WHERE id = 1").fetchone()
    if runs <= max_runs:
        return
    excess = int(runs) - max_runs * 9 // 10
    n = upto = 0
    for first, last in db.execute(
        "SELECT first_seq, last_seq FROM dropped_seqs ORDER BY first_seq LIMIT ?", (excess,)
    ).fetchall():
        n += last - first + 1
        upto = first
    db.execute("DELETE FROM dropped_seqs WHERE first_seq <= ?", (upto,))
    db.execute(
        "UPDATE totals SET runs = runs - ?, unlisted = unlisted + ? WHERE id = 1", (excess, n)
    )


def defer(db: sqlite3.Connection, seqs: Sequence[int], reason: str) -> None:
    """Remember rows deleted while in flight; counted only if their batch fails."""
    db.executemany(
        "INSERT OR REPLACE INTO dropped_in_flight (seq, reason) VALUES (?, ?)",
        ((seq, reason) for seq in seqs),
    )


def resolve(db: sqlite3.Connection, seqs: Sequence[int], *, delivered: bool, max_runs: int) -> int:
    """The batch ``seqs`` is done: forget its rows dropped in flight if it was delivered, else
    count them (by the budget's reason) and list their seqs. Returns how many there were."""
    found: list[tuple[int, str]] = []
    for i in range(0, len(seqs), _CHUNK):
        chunk = seqs[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found += db.execute(
            f"DELETE FROM dropped_in_flight WHERE seq IN ({marks}) RETURNING seq, reason", chunk
        ).fetchall()
    if found and not delivered:
        _count_seqs(db, found, max_runs)
    return len(found)


def settle_in_flight(db: sqlite3.Connection, keep: Iterable[int], max_runs: int) -> int:
    """Count every row dropped in flight whose batch is not in flight in this process (``keep``
    is what is): its PUBACK can no longer arrive. Returns how many were counted."""
    keep = set(keep)
    found = [
        (int(seq), str(reason))
        for seq, reason in db.execute("SELECT seq, reason FROM dropped_in_flight ORDER BY seq")
        if seq not in keep
    ]
    for i in range(0, len(found), _CHUNK):
        chunk = [seq for seq, _ in found[i : i + _CHUNK]]
        marks = ",".join("?" * len(chunk))
        db.execute(f"DELETE FROM dropped_in_flight WHERE seq IN ({marks})", chunk)
    _count_seqs(db, found, max_runs)
    return len(found)


def _count_seqs(db: sqlite3.Connection, found: list[tuple[int, str]], max_runs: int) -> None:
    by_reason: dict[str, int] = {}
    for _, reason in found:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    for reason, n in by_reason.items():
        count_drop(db, reason, n)
    add_runs(db, list(runs_of(sorted(seq for seq, _ in found))), max_runs)


def listed_runs(db: sqlite3.Connection, limit: int) -> list[tuple[int, int]]:
    """The newest ``limit`` runs of dropped seqs, newest first."""
    rows = db.execute(
        "SELECT first_seq, last_seq FROM dropped_seqs ORDER BY first_seq DESC LIMIT ?", (limit,)
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]
