"""Proxy mode while the CSMS is unreachable: the durable queue and the transaction-id mapping.

OCPP 1.6 §3.7 ("Transaction-related messages"): StartTransaction, StopTransaction and the
MeterValues of a transaction must reach the central system, in order, even when the connection
was down; a charger queues them itself while it is offline. Behind the gateway the charger is
never offline (its WebSocket to the gateway stays up), so the gateway does the queueing:

- StartTransaction, StopTransaction and MeterValues that carry a ``transactionId`` are stored
  here (SQLite, ``synchronous=FULL``: on disk before the charger gets its answer) and answered
  by the gateway: StartTransaction with a *gateway* transaction id (negative, so it can never be
  one the CSMS assigned), ``idTagInfo`` ``Accepted``;
- every other CALL is answered with CALLERROR ``InternalError`` (OCPP-J 1.6 §4.2.3: "an internal
  error occurred and the receiver was not able to process the requested Action"), the charger
  retries or gives up as it would with a CSMS that failed;
- when the CSMS is back, :meth:`OfflineStore.pending` is replayed in order before any new frame
  of that charger, the CSMS's ``transactionId`` from the replayed StartTransaction.conf is
  remembered (:meth:`OfflineStore.map_transaction`) and put into the queued and later frames.

OCPP 2.0.1 (Part 2, functional block E "Transactions", transaction-related messages and the
offline use cases E04/E12): the only transaction-related message is TransactionEvent (meter
values of a transaction travel in it; MeterValuesRequest is not transaction-related, unlike
1.6). It is queued and answered by the gateway (``idTokenInfo`` ``Accepted`` when it carries an
``idToken``); its ``transactionId`` is the charger's own, so nothing is mapped. Every other CALL
gets CALLERROR ``InternalError`` (OCPP-J 2.0.1, Part 4: the same definition as 1.6's).

Queue, gateway ids and the mapping live in one SQLite file beside ``state_path``, so they survive
a gateway restart. Blocking calls: run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

log = logging.getLogger(__name__)

#: OCPP 1.6 actions that are queued while the CSMS is down (MeterValues: with a transactionId).
QUEUED_16: Final = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})
#: OCPP 2.0.1's transaction-related message.
QUEUED_201: Final = frozenset({"TransactionEvent"})
EPOCH_S: Final = 1_735_689_600  # 2025-01-01T00:00:00Z, as edge_agent.ocpp.transactions
INT32_MIN: Final = -(2**31)
#: Transactions remembered per gateway (their connector and CSMS id); the oldest go first.
MAX_TRANSACTIONS: Final = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charger_id TEXT NOT NULL,
    unique_id TEXT NOT NULL,
    action TEXT NOT NULL,
    payload BLOB NOT NULL,
    gateway_tid INTEGER
);
CREATE INDEX IF NOT EXISTS queue_charger ON queue (charger_id, seq);
CREATE TABLE IF NOT EXISTS transactions (
    charger_id TEXT NOT NULL,
    charger_tid INTEGER NOT NULL,
    connector INTEGER NOT NULL,
    csms_tid INTEGER,
    added REAL NOT NULL,
    PRIMARY KEY (charger_id, charger_tid)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def store_path(state_path: Path) -> Path:
    """The queue's file: beside ``state_path`` (``edge-ocpp-state.json`` ->
    ``edge-ocpp-state.proxy.sqlite3``)."""
    return state_path.with_name(state_path.stem + ".proxy.sqlite3")


def is_queued(action: str, payload: dict[str, Any], subprotocol: str | None = "ocpp1.6") -> bool:
    """Is this CALL transaction-related (1.6 §3.7; 2.0.1: TransactionEvent), so queued while
    the CSMS is down?"""
    if subprotocol == "ocpp2.0.1":
        return action in QUEUED_201
    if subprotocol != "ocpp1.6":
        return False
    if action == "MeterValues":
        return payload.get("transactionId") is not None
    return action in QUEUED_16


@dataclass(frozen=True, slots=True)
class Queued:
    seq: int
    unique_id: str
    action: str
    payload: dict[str, Any]
    #: StartTransaction: the id the gateway gave the charger.
    gateway_tid: int | None


class QueueFull(Exception):
    """The charger's offline queue holds its maximum (``OFFLINE_MAX_QUEUED``)."""


class OfflineStore:
    """One per gateway (every charger's queue). Thread-safe; each write is committed and
    fsynced (``synchronous=FULL``) before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        #: (charger, charger's tid) -> (connector, CSMS tid or None): read by the taps.
        self._tx: dict[tuple[str, int], tuple[int, int | None]] = {
            (c, t): (conn, csms)
            for c, t, conn, csms in self._db.execute(
                "SELECT charger_id, charger_tid, connector, csms_tid FROM transactions"
            )
        }

        self._replays: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def replay_lock(self, charger_id: str) -> asyncio.Lock:
        """Held while a charger's queue is replayed: a connection that replaces another one of
        the same charger waits for the old one's replay instead of sending the queue twice.
        (Event-loop side only; kept while a relay holds it.)"""
        lock = self._replays.get(charger_id)
        if lock is None:
            lock = self._replays[charger_id] = asyncio.Lock()
        return lock

    # -- what the relay reads (memory only: no I/O) ------------------------------------------

    def connector_of(self, charger_id: str, charger_tid: int) -> int | None:
        found = self._tx.get((charger_id, charger_tid))
        return None if found is None else found[0]

    def csms_tid(self, charger_id: str, charger_tid: int) -> int | None:
        """The CSMS's id for a transaction the gateway started (None: not known yet)."""
        found = self._tx.get((charger_id, charger_tid))
        return None if found is None else found[1]

    def charger_tid(self, charger_id: str, csms_tid: int) -> int | None:
        """The charger's id for a CSMS id the gateway mapped (None: no mapping, same id)."""
        for (charger, tid), (_, csms) in list(self._tx.items()):
            if charger == charger_id and csms == csms_tid and tid != csms_tid:
                return tid
        return None

    def has_pending(self, charger_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM queue WHERE charger_id = ? LIMIT 1", (charger_id,)
            ).fetchone()
        return row is not None

    # -- writes (blocking) --------------------------------------------------------------------

    def enqueue(
        self,
        charger_id: str,
        unique_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        connector: int | None = None,
        limit: int | None = None,
    ) -> int | None:
        """Queue a CALL; for a StartTransaction allocate (and return) the gateway's transaction
        id, in the same commit. :class:`QueueFull` (nothing written) when the charger already
        has ``limit`` queued."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if limit is not None:
                (queued,) = self._db.execute(
                    "SELECT count(*) FROM queue WHERE charger_id = ?", (charger_id,)
                ).fetchone()
                if queued >= limit:
                    raise QueueFull(f"{queued} messages queued for {charger_id}")
            gateway_tid = None
            if action == "StartTransaction":
                gateway_tid = self._next_tid()
                self._remember(charger_id, gateway_tid, connector or 0, None)
            self._db.execute(
                "INSERT INTO queue (charger_id, unique_id, action, payload, gateway_tid) "
                "VALUES (?, ?, ?, ?, ?)",
                (charger_id, unique_id, action, orjson.dumps(payload), gateway_tid),
            )
        return gateway_tid

    def remember(self, charger_id: str, charger_tid: int, connector: int) -> None:
        """A transaction the CSMS started (same id on both sides): its connector."""
        if (charger_id, charger_tid) in self._tx:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._remember(charger_id, charger_tid, connector, charger_tid)

    def map_transaction(self, charger_id: str, gateway_tid: int, csms_tid: int) -> None:
        """The CSMS answered a replayed StartTransaction with ``csms_tid``."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE transactions SET csms_tid = ? WHERE charger_id = ? AND charger_tid = ?",
                (csms_tid, charger_id, gateway_tid),
            )
            connector = self._tx.get((charger_id, gateway_tid), (0, None))[0]
            self._tx[(charger_id, gateway_tid)] = (connector, csms_tid)

    def pending(self, charger_id: str) -> list[Queued]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, unique_id, action, payload, gateway_tid FROM queue "
                "WHERE charger_id = ? ORDER BY seq",
                (charger_id,),
            ).fetchall()
        return [Queued(s, u, a, orjson.loads(p), g) for s, u, a, p, g in rows]

    def done(self, seq: int) -> None:
        """The CSMS answered a replayed message: it leaves the queue."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,))

    def _next_tid(self) -> int:
        """Gateway transaction ids are negative: -max(last + 1, seconds since 2025), so they
        never meet a CSMS's (positive) ids and stay unique even if this file is lost."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_tid'").fetchone()
        last = int(row[0]) if row else 0
        tid = max(last + 1, int(time.time()) - EPOCH_S, 1)
        if -tid < INT32_MIN:
            raise OverflowError("OCPP 1.6 gateway transaction ids are exhausted (int32)")
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_tid', ?)", (tid,))
        return -tid

    def _remember(self, charger_id: str, tid: int, connector: int, csms: int | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO transactions VALUES (?, ?, ?, ?, ?)",
            (charger_id, tid, connector, csms, time.time()),
        )
        self._tx[(charger_id, tid)] = (connector, csms)
        if len(self._tx) > MAX_TRANSACTIONS:
            oldest = next(iter(self._tx))
            del self._tx[oldest]
            self._db.execute(
                "DELETE FROM transactions WHERE charger_id = ? AND charger_tid = ?", oldest
            )


def offline_answer(action: str, payload: dict[str, Any], gateway_tid: int | None) -> Any:
    """The payload of the gateway's CALLRESULT to a queued CALL (1.6, or 2.0.1's
    TransactionEvent: ``idTokenInfo`` when it carries an ``idToken``, as 2.0.1 requires)."""
    if action == "TransactionEvent":
        return {"idTokenInfo": {"status": "Accepted"}} if payload.get("idToken") else {}
    if action == "StartTransaction":
        return {"transactionId": gateway_tid, "idTagInfo": {"status": "Accepted"}}
    if action == "StopTransaction" and payload.get("idTag") is not None:
        return {"idTagInfo": {"status": "Accepted"}}
    return {}
