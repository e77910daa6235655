"""Opening the outbox database: pragmas, schema, migration, and recovery from damage.

Durability: WAL mode with ``synchronous=FULL``: a commit returns after the WAL is fsynced. After
a power loss or a killed writer, SQLite replays the WAL up to the last frame whose checksum
holds; a torn, half-written transaction is discarded (it never returned to the caller), every
committed one is kept. That is checked on every open with ``PRAGMA quick_check``.

If the file itself is damaged beyond that (a bad disk, a copy cut short), the agent does not
crash-loop: the damaged file is moved aside as ``NAME.corrupt-UNIXTIME`` (kept for the operator)
and every readable row is copied into a fresh outbox. If the old file's seq counter and epoch
can be read, the fresh outbox keeps the epoch and ``seq`` continues after the old counter;
otherwise it gets a new epoch and the copied rows are numbered again from 1 (in their order), so
no seq of the new epoch was ever handed out before and none is skipped.

The outbox's *epoch* (``meta`` table): 64 random bits in hex, made when the file is created (or
first opened by an agent that knows epochs). ``seq`` is unique per (gateway, epoch): an outbox
deleted and created again starts at seq 1 with a new epoch, and the cloud tracks the new
numbering on its own.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    captured_at REAL NOT NULL,
    body BLOB NOT NULL,
    energy INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY,
    captured_at REAL NOT NULL,
    body BLOB NOT NULL,
    parked_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    unlisted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dropped (reason TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dropped_seqs (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped_in_flight (seq INTEGER PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series_ts (
    charger_id TEXT NOT NULL,
    evse_id INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    given_ms INTEGER NOT NULL,
    PRIMARY KEY (charger_id, evse_id, connector_id)
) WITHOUT ROWID;
"""
_EPOCH: Final = re.compile(r"[0-9a-f]{16}")
_SALVAGE_CHUNK: Final = 1_000


class DamagedOutbox(Exception):
    """The file is not a readable SQLite outbox (internal: triggers the salvage)."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the outbox at ``path`` with the durability pragmas and the schema."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # Bound the WAL file once a checkpoint has emptied it (it is reused, not grown).
        db.execute("PRAGMA journal_size_limit=67108864")
        db.executescript(SCHEMA)
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an outbox written by an older agent up to the current schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    totals = {row[1] for row in db.execute("PRAGMA table_info(totals)")}
    db.execute("BEGIN IMMEDIATE")
    try:
        if "energy" not in columns:
            db.execute("ALTER TABLE outbox ADD COLUMN energy INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE outbox SET energy = 1 WHERE instr(body, '\"energy_wh\":') > 0")
        if "runs" not in totals:  # dropped_seqs is new: what was dropped before is unlisted
            db.execute("ALTER TABLE totals ADD COLUMN runs INTEGER NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE totals ADD COLUMN unlisted INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "UPDATE totals SET unlisted = (SELECT coalesce(sum(n), 0) FROM dropped "
                "WHERE reason != 'disk_full_refused')"
            )
        db.execute(
            "INSERT OR IGNORE INTO totals (id, rows, bytes) "
            "SELECT 1, count(*), coalesce(sum(length(body)), 0) FROM outbox"
        )
        db.execute("CREATE INDEX IF NOT EXISTS outbox_non_energy ON outbox (seq) WHERE energy = 0")
        # An outbox made before epochs gets one now (its seqs go on: the cloud sees a new epoch
        # once and tracks it from there).
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (secrets.token_hex(8),)
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def read_epoch(db: sqlite3.Connection) -> str:
    """The outbox's epoch (16 lowercase hex digits)."""
    (value,) = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return str(value)


def open_outbox(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """Open the outbox, recovering from damage; returns the connection and, if it had to
    salvage, a one-line description of what happened (also logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = connect(path)
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
        if problems == ["ok"]:
            return db, None
        db.close()
        detail = "; ".join(problems[:3])
    except sqlite3.DatabaseError as exc:
        detail = str(exc)
    return salvage(path, detail)


def salvage(path: Path, detail: str) -> tuple[sqlite3.Connection, str]:
    """Move a damaged outbox aside and copy what can be read into a fresh one."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(f"{aside}{suffix}")
    log.critical("outbox %s is damaged (%s); moved aside to %s, salvaging", path, detail, aside)
    db = connect(path)
    copied, high, epoch = _copy_readable(aside, db)
    if epoch is not None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (high,))
        db.execute("COMMIT")
        how = f"epoch {epoch} kept, seq continues after {high}"
    else:
        how = f"new epoch {read_epoch(db)}, the salvaged readings numbered 1..{copied}"
    note = f"damaged outbox moved to {aside.name} ({detail}); {copied} readings salvaged, {how}"
    log.critical("%s", note)
    return db, note


def _copy_readable(old_path: Path, db: sqlite3.Connection) -> tuple[int, int, str | None]:
    """Copy the readable outbox rows (and ts marks) of ``old_path`` into ``db``; returns (rows
    copied, the old seq counter, the old epoch). The epoch is None when the old counter or
    epoch cannot be read: the rows are then numbered again from 1 (a new epoch's numbering)."""
    try:
        old = sqlite3.connect(f"file:{old_path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return 0, 0, None
    copied = high = 0
    epoch: str | None = None
    try:
        try:
            row = old.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            found = old.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is not None and found is not None and _EPOCH.fullmatch(str(found[0])):
                high, epoch = int(row[0]), str(found[0])
        except sqlite3.DatabaseError:
            pass
        try:
            marks = old.execute("SELECT * FROM series_ts").fetchall()
            db.executemany("INSERT OR REPLACE INTO series_ts VALUES (?, ?, ?, ?, ?)", marks)
        except sqlite3.DatabaseError:
            pass  # ts marks are a safeguard: without them the agent starts with none
        after, step = 0, 1
        while step <= 1 << 40:
            try:
                rows = old.execute(
                    "SELECT seq, captured_at, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _SALVAGE_CHUNK),
                ).fetchall()
            except sqlite3.DatabaseError:
                after += step  # skip past the unreadable part, ever further
                step *= 2
                continue
            if not rows:
                break
            step = 1
            _insert_salvaged(db, rows, keep_seq=epoch is not None)
            copied += len(rows)
            after = int(rows[-1][0])
            high = max(high, after)
    finally:
        old.close()
    return copied, high, epoch


def _insert_salvaged(
    db: sqlite3.Connection, rows: list[tuple[int, float, bytes]], *, keep_seq: bool
) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO outbox (seq, captured_at, body, energy) VALUES (?, ?, ?, "
        "instr(?, '\"energy_wh\":') > 0)",
        ((seq if keep_seq else None, at, bytes(body), bytes(body)) for seq, at, body in rows),
    )
    n = len(rows)
    size = sum(len(body) for _, _, body in rows)
    db.execute("UPDATE totals SET rows = rows + ?, bytes = bytes + ? WHERE id = 1", (n, size))
    db.execute("COMMIT")
