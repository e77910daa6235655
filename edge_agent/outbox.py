"""The durable outbox: SQLite in WAL mode with ``synchronous=FULL``.

Durability: ``append`` returns after the transaction is committed and fsynced, so a reading the
agent accepted survives power loss. Rows leave only through ``delete`` (after the broker's PUBACK)
or ``park`` (a permanent refusal, kept for the operator). ``seq`` is SQLite's AUTOINCREMENT key:
monotonic per gateway and never reused, across restarts and purges.

The class is synchronous and thread-safe; the agent calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    captured_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY,
    captured_at REAL NOT NULL,
    body BLOB NOT NULL,
    parked_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    body: bytes

    def reading_json(self) -> bytes:
        """The reading as sent: the stored body with ``seq`` spliced in first."""
        return b'{"seq":%d,%s' % (self.seq, self.body[1:])


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    pending_bytes: int
    parked: int
    oldest_seq: int | None
    newest_seq: int | None
    oldest_age_s: float | None
    last_seq_assigned: int


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, bodies: Iterable[bytes]) -> list[int]:
        """Store captures durably and return the ``seq`` each was given."""
        now = time.time()
        seqs: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for body in bodies:
                    cur = self._db.execute(
                        "INSERT INTO outbox (captured_at, body) VALUES (?, ?)", (now, body)
                    )
                    assert cur.lastrowid is not None
                    seqs.append(cur.lastrowid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seqs

    def oldest(self, limit: int, max_bytes: int) -> list[OutboxRow]:
        """The oldest rows, at most ``limit`` of them and about ``max_bytes`` of JSON."""
        rows: list[OutboxRow] = []
        size = 0
        with self._lock:
            cur = self._db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
            for seq, body in cur:
                size += len(body) + 32  # the spliced seq and the comma
                if rows and size > max_bytes:
                    break
                rows.append(OutboxRow(seq, bytes(body)))
        return rows

    def delete(self, seqs: Iterable[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", ((s,) for s in seqs))
            self._db.execute("COMMIT")

    def park(self, seqs: Iterable[int], reason: str) -> None:
        """Move rows the broker refused for good out of the way, keeping them for the operator."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for s in seqs:
                self._db.execute(
                    "INSERT OR REPLACE INTO parked SELECT seq, captured_at, body, ?, ? "
                    "FROM outbox WHERE seq = ?",
                    (now, reason, s),
                )
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (s,))
            self._db.execute("COMMIT")

    def purge(self) -> int:
        """Delete every pending row (an operator's decision); returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox")
            return cur.rowcount

    def stats(self) -> OutboxStats:
        with self._lock:
            pending, size, lo, hi, oldest_at = self._db.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0), min(seq), max(seq), "
                "min(captured_at) FROM outbox"
            ).fetchone()
            (parked,) = self._db.execute("SELECT count(*) FROM parked").fetchone()
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
            last = row.fetchone()
        return OutboxStats(
            pending=pending,
            pending_bytes=size,
            parked=parked,
            oldest_seq=lo,
            newest_seq=hi,
            oldest_age_s=None if oldest_at is None else max(0.0, time.time() - oldest_at),
            last_seq_assigned=last[0] if last else 0,
        )
