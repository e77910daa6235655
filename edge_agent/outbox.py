"""The durable, bounded outbox: SQLite in WAL mode with ``synchronous=FULL``.

Durability: ``append`` returns after the transaction is committed and fsynced, so a reading the
agent accepted survives power loss (recovery on open: :mod:`edge_agent.store`). Rows leave only
through ``delete`` (acknowledged), ``park`` (a permanent refusal, kept for the
operator), the budget policy (:mod:`edge_agent.budget`, counted by reason) or ``purge`` (the
operator); ``delete`` and ``forget`` run once the bridges acknowledged the rows as stored (or,
with ``delete_after = "puback"``, once the broker acknowledged them). ``seq`` is SQLite's
AUTOINCREMENT key: monotonic per gateway and never reused, across restarts and purges.

Batches in flight: the publisher ``claim``s a batch before sending it and ends the claim with
``delete``, ``park`` or ``release``; a row the budget drops while claimed is counted only if
its batch is not acknowledged (:mod:`edge_agent.drops`), so a delivered reading is never
counted as dropped.

Disk full (SQLITE_FULL, also ENOSPC): ``append`` never raises for it. It frees room by the
budget rule (reasons ``disk_full_*``), holds the outbox at the size it had for a minute (then
tries to grow again) and retries once; if the disk is still full the captures are refused and
counted (``disk_full_refused``). The sources are never blocked.

Pending rows and bytes are kept in a ``totals`` row updated in the same transactions, so stats and
budget checks never scan the table, and a second process (the operator CLI) sees the same.

The class is synchronous and thread-safe; the agent calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

from edge_agent import drops
from edge_agent.budget import Budget, count_drop, drop_oldest, is_energy, trim_parked
from edge_agent.records import OutboxRow, OutboxStats
from edge_agent.series import Marks
from edge_agent.store import open_outbox, read_epoch
from telemetry_common.schema import MAX_SEQ

__all__ = ["Outbox", "OutboxRow", "OutboxStats"]

log = logging.getLogger(__name__)

#: How long a disk-full episode caps the outbox at the size it had then.
DISK_FULL_HOLD_S: Final = 60.0
_IN_CHUNK: Final = 500
_MARKS_CHUNK: Final = 200


def _store_marks(db: sqlite3.Connection, marks: Marks) -> None:
    """Write ts marks, up to _MARKS_CHUNK rows per statement (a third cheaper than one
    statement per row: a 100-charger tick writes 100 marks)."""
    items = list(marks.items())
    for i in range(0, len(items), _MARKS_CHUNK):
        chunk = items[i : i + _MARKS_CHUNK]
        rows = ",".join(["(?, ?, ?, ?, ?)"] * len(chunk))
        params = [x for key, mark in chunk for x in (*key, *mark)]
        db.execute(f"INSERT OR REPLACE INTO series_ts VALUES {rows}", params)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


class Outbox:
    def __init__(
        self, path: Path, budget: Budget | None = None, *, max_file_bytes: int | None = None
    ) -> None:
        """``max_file_bytes``: a hard cap on the database file (SQLite's ``max_page_count``);
        reaching it behaves exactly like a full disk."""
        self.path = Path(path)
        self.budget = budget or Budget()
        self._lock = threading.Lock()
        self._db, self.recovered = open_outbox(self.path)
        self._epoch = read_epoch(self._db)
        if max_file_bytes is not None:
            (page,) = self._db.execute("PRAGMA page_size").fetchone()
            self._db.execute(f"PRAGMA max_page_count={max(8, max_file_bytes // int(page))}")
        self._disk_cap: tuple[int, float] | None = None  # (bytes, since monotonic)
        self._unsaved: dict[str, int] = {}  # drops counted while the disk refused writes
        self._in_flight: set[int] = set()  # seqs of the batches awaiting their PUBACK

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def epoch(self) -> str:
        """This outbox's identity (16 hex digits): ``seq`` is unique per (gateway, epoch)."""
        return self._epoch

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (the caller holds the lock); rolled back on any error."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
                db.execute("ROLLBACK")
            raise

    # -- writing ---------------------------------------------------------------------------
    def append(self, bodies: Iterable[bytes], marks: Marks | None = None) -> list[int]:
        """Store captures durably and return the ``seq`` each was given ([] if the disk refused
        them, or seq would pass 2^53-1). The budget policy may drop older readings, or these, in
        the same transaction. ``marks``: the ts marks of the series these captures touched
        (:mod:`edge_agent.series`), stored in the same transaction."""
        now = time.time()
        rows = [(now, body, 1 if is_energy(body) else 0) for body in bodies]
        if not rows:
            return []
        size = sum(len(r[1]) for r in rows)
        with self._lock:
            if self._last_seq() + len(rows) > MAX_SEQ:
                return self._refuse_seqs(len(rows))
            try:
                return self._append(rows, size, marks)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                log.error("outbox: disk full (%s); dropping old readings to make room", exc)
            try:
                self._make_room(size)
                return self._append(rows, size, marks)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                self._unsaved["disk_full_refused"] = self._unsaved.get(
                    "disk_full_refused", 0
                ) + len(rows)
                log.error("outbox: disk still full; %d new readings refused", len(rows))
                return []

    def _refuse_seqs(self, n: int) -> list[int]:
        """The seqs are used up (2^53-1, which the cloud refuses beyond): refuse, count, say."""
        log.error(
            "outbox: seq would pass 2^53-1 (last seq %d): %d new readings refused. Stop the "
            "agent, drain or move the outbox file %s away, and start again: a new outbox has "
            "a new epoch and numbers from 1",
            self._last_seq(),
            n,
            self.path,
        )
        with self._tx() as db:
            count_drop(db, "seq_exhausted_refused", n)
        return []

    def _append(
        self, rows: list[tuple[float, bytes, int]], size: int, marks: Marks | None
    ) -> list[int]:
        with self._tx() as db:
            first = self._last_seq() + 1
            db.executemany("INSERT INTO outbox (captured_at, body, energy) VALUES (?, ?, ?)", rows)
            last = self._last_seq()
            if last - first + 1 != len(rows):
                raise RuntimeError(f"outbox: seq {first}..{last} for {len(rows)} rows")
            if marks:
                _store_marks(db, marks)
            db.execute(
                "UPDATE totals SET rows = rows + ?, bytes = bytes + ? WHERE id = 1",
                (len(rows), size),
            )
            self._enforce(db)
            for reason, n in self._unsaved.items():
                count_drop(db, reason, n)
        self._unsaved.clear()
        return list(range(first, last + 1))

    def _enforce(self, db: sqlite3.Connection) -> None:
        rows, size = db.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
        max_bytes, cause = self.budget.max_bytes, "budget"
        cap = self._current_disk_cap()
        if cap is not None and cap < max_bytes:
            max_bytes, cause = cap, "disk_full"
        if rows > self.budget.max_rows or size > max_bytes:
            drop_oldest(
                db,
                rows - self.budget.max_rows,
                size - max_bytes,
                cause,
                in_flight=self._in_flight,
                max_runs=self.budget.max_dropped_runs,
            )

    def _current_disk_cap(self) -> int | None:
        if self._disk_cap is None:
            return None
        cap, since = self._disk_cap
        if time.monotonic() - since > DISK_FULL_HOLD_S:
            self._disk_cap = None  # space may have been freed: try to grow again
            return None
        return cap

    def _make_room(self, size: int) -> None:
        try:  # a checkpoint moves the WAL into the file so its pages can be reused
            self._db.execute("PRAGMA wal_checkpoint(RESTART)")
        except sqlite3.Error as exc:
            log.warning("outbox: checkpoint failed while the disk is full: %s", exc)
        with self._tx() as db:
            (held,) = db.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()
            # Room for this batch and half again (B-tree pages are not full): from then on the
            # budget rule frees, after each insert, the pages the next insert will reuse.
            _, freed = drop_oldest(
                db,
                0,
                size + size // 2 + 16384,
                "disk_full",
                in_flight=self._in_flight,
                max_runs=self.budget.max_dropped_runs,
            )
        self._disk_cap = (max(0, int(held) - freed), time.monotonic())

    # -- batches in flight ------------------------------------------------------------------
    def claim(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """Mark a batch as in flight (sent, awaiting its PUBACK) and return its rows that are
        still pending (the budget may have dropped some since they were read; those were
        counted, so they must not be sent) and not in flight already. Every claimed batch ends
        with :meth:`delete` (PUBACK), :meth:`park` (refused) or :meth:`release` (no PUBACK)."""
        if not rows:
            return []
        with self._lock:
            present = {
                int(seq)
                for (seq,) in self._db.execute(
                    "SELECT seq FROM outbox WHERE seq >= ? AND seq <= ?",
                    (rows[0].seq, rows[-1].seq),
                )
            }
            kept = [r for r in rows if r.seq in present and r.seq not in self._in_flight]
            self._in_flight.update(r.seq for r in kept)
        return kept

    def release(self, seqs: Iterable[int]) -> int:
        """The batch got no PUBACK (connection lost, timeout): its pending rows stay to be sent
        again; those the budget dropped while it was in flight are counted now. Returns how
        many were counted."""
        seqs = list(seqs)
        with self._lock, self._done(seqs), self._tx() as db:
            return drops.resolve(db, seqs, delivered=False, max_runs=self.budget.max_dropped_runs)

    @contextmanager
    def _done(self, seqs: list[int]) -> Iterator[None]:
        """The batch ``seqs`` is no longer in flight once this exits (the caller holds the
        lock, so the budget never sees it half done)."""
        try:
            yield
        finally:
            self._in_flight.difference_update(seqs)

    def settle_in_flight(self) -> int:
        """Count the rows an earlier process saw dropped while in flight: their PUBACK can no
        longer arrive. The publisher calls this when it starts; returns how many."""
        with self._lock, self._tx() as db:
            n = drops.settle_in_flight(db, self._in_flight, self.budget.max_dropped_runs)
        if n:
            log.warning(
                "outbox: %d readings dropped by the budget while in flight when the agent "
                "stopped; counted as dropped (they may have been delivered)",
                n,
            )
        return n

    def delete(self, seqs: Iterable[int]) -> int:
        """Remove rows the broker acknowledged (rows the budget dropped while they were in
        flight were delivered after all: they are not counted); returns how many were still
        there."""
        seqs = list(seqs)
        with self._lock, self._done(seqs), self._tx() as db:
            n, size = self._remove(db, seqs)
            db.execute(
                "UPDATE totals SET rows = rows - ?, bytes = bytes - ? WHERE id = 1", (n, size)
            )
            drops.resolve(db, seqs, delivered=True, max_runs=self.budget.max_dropped_runs)
        return n

    def forget(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Remove the pending rows in the inclusive seq ``ranges`` that are not in flight: the
        bridges acknowledged them as stored after their batch was given up (a batch in flight
        ends with its own claim). Returns how many were removed."""
        n = size = 0
        with self._lock, self._tx() as db:
            for first, last in ranges:
                rows = db.execute(
                    "SELECT seq FROM outbox WHERE seq >= ? AND seq <= ?", (first, last)
                ).fetchall()
                free = [int(seq) for (seq,) in rows if int(seq) not in self._in_flight]
                removed, length = self._remove(db, free)
                n, size = n + removed, size + length
            db.execute(
                "UPDATE totals SET rows = rows - ?, bytes = bytes - ? WHERE id = 1", (n, size)
            )
        return n

    def _remove(self, db: sqlite3.Connection, seqs: Sequence[int]) -> tuple[int, int]:
        n = size = 0
        for i in range(0, len(seqs), _IN_CHUNK):
            chunk = seqs[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING length(body)"
            for (length,) in db.execute(sql, chunk).fetchall():
                n += 1
                size += length
        return n, size

    def park(self, seqs: Iterable[int], reason: str) -> int:
        """Move rows the broker refused for good out of the way, keeping them for the operator
        (at most ``budget.max_parked_rows``; the oldest parked go first, counted)."""
        seqs = list(seqs)
        now = time.time()
        with self._lock, self._done(seqs), self._tx() as db:
            for i in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                db.execute(
                    "INSERT OR REPLACE INTO parked SELECT seq, captured_at, body, ?, ? "
                    f"FROM outbox WHERE seq IN ({marks})",
                    (now, reason, *chunk),
                )
            n, size = self._remove(db, seqs)
            db.execute(
                "UPDATE totals SET rows = rows - ?, bytes = bytes - ? WHERE id = 1", (n, size)
            )
            # Rows the budget dropped while this batch was in flight were not delivered.
            runs = self.budget.max_dropped_runs
            drops.resolve(db, seqs, delivered=False, max_runs=runs)
            trim_parked(db, self.budget.max_parked_rows, runs)
        return n

    def purge(self) -> int:
        """Delete every pending row (an operator's decision, counted as ``purged`` and
        listed). Run it with the agent stopped: a batch the agent has in flight is counted
        although its PUBACK may still come."""
        with self._lock, self._tx() as db:
            recorder = drops.SeqRecorder(db, self.budget.max_dropped_runs)
            cur = db.execute("SELECT seq FROM outbox ORDER BY seq")
            for (seq,) in cur:
                recorder.add(int(seq))
            cur.close()
            recorder.flush()
            n = db.execute("DELETE FROM outbox").rowcount
            db.execute("UPDATE totals SET rows = 0, bytes = 0 WHERE id = 1")
            count_drop(db, "purged", n)
        return n

    # -- reading ---------------------------------------------------------------------------
    def _last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def series_marks(self) -> Marks:
        """The stored ts mark of every series (:mod:`edge_agent.series`)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM series_ts").fetchall()
        return {(str(c), int(e), int(k)): (int(t), int(g)) for c, e, k, t, g in rows}

    def last_seq(self) -> int:
        """The last seq handed out (0 if none)."""
        with self._lock:
            return self._last_seq()

    def pending(self) -> int:
        with self._lock:
            (rows,) = self._db.execute("SELECT rows FROM totals WHERE id = 1").fetchone()
        return int(rows)

    def batch_after(
        self, after: int, upto: int | None, limit: int, max_bytes: int
    ) -> list[OutboxRow]:
        """Rows with ``after < seq (<= upto)``, oldest first, at most ``limit`` of them and
        about ``max_bytes`` of JSON (at least one row)."""
        rows: list[OutboxRow] = []
        size = 0
        sql = (
            "SELECT seq, body, captured_at FROM outbox WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?"
        )
        with self._lock:
            cur = self._db.execute(sql, (after, upto if upto is not None else 2**63 - 1, limit))
            for seq, body, at in cur:
                size += len(body) + 32  # the spliced seq and the comma
                if rows and size > max_bytes:
                    break
                rows.append(OutboxRow(seq, bytes(body), at))
            cur.close()
        return rows

    def oldest(self, limit: int, max_bytes: int) -> list[OutboxRow]:
        """The oldest rows, at most ``limit`` of them and about ``max_bytes`` of JSON."""
        return self.batch_after(0, None, limit, max_bytes)

    def stats(self) -> OutboxStats:
        with self._lock:
            db = self._db
            pending, size = db.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
            lo, hi = db.execute("SELECT min(seq), max(seq) FROM outbox").fetchone()
            first = db.execute("SELECT captured_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
            (parked,) = db.execute("SELECT count(*) FROM parked").fetchone()
            dropped = dict(db.execute("SELECT reason, n FROM dropped ORDER BY reason").fetchall())
            for reason, n in self._unsaved.items():
                dropped[reason] = dropped.get(reason, 0) + n
            (in_flight,) = db.execute("SELECT count(*) FROM dropped_in_flight").fetchone()
            runs, unlisted = db.execute("SELECT runs, unlisted FROM totals WHERE id = 1").fetchone()
            newest = drops.listed_runs(db, 1)
            last = self._last_seq()
            disk_full = self._current_disk_cap() is not None
        files = (self.path, Path(f"{self.path}-wal"))
        return OutboxStats(
            pending=int(pending),
            pending_bytes=int(size),
            parked=int(parked),
            oldest_seq=lo,
            newest_seq=hi,
            oldest_age_s=None if first is None else max(0.0, time.time() - first[0]),
            last_seq_assigned=last,
            dropped=dropped,
            dropped_in_flight=int(in_flight),
            dropped_runs=int(runs),
            dropped_unlisted=int(unlisted),
            newest_dropped=newest[0] if newest else None,
            max_rows=self.budget.max_rows,
            max_bytes=self.budget.max_bytes,
            file_bytes=sum(os.stat(f).st_size for f in files if f.exists()),
            disk_full=disk_full,
        )

    def dropped_runs(self, limit: int) -> list[tuple[int, int]]:
        """The newest ``limit`` runs ``(first_seq, last_seq)`` of dropped seqs, newest first."""
        with self._lock:
            return drops.listed_runs(self._db, limit)

    def parked_rows(self, limit: int) -> list[tuple[int, str, bytes]]:
        """The oldest parked rows as (seq, reason, body)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, reason, body FROM parked ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(int(s), str(r), bytes(b)) for s, r, b in rows]
