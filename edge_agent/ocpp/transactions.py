"""OCPP transaction ids: allocated by the gateway, unique across restarts, and the open ones.

An id is ``max(last + 1, seconds since 2025-01-01)``: it grows by one per transaction and never
falls behind the clock, so even if the state file is lost, ids stay unique unless transactions
were started faster than one per second on average. It fits OCPP 1.6's int32 until about 2093.
The state file (JSON, replaced atomically and fsynced) also remembers open transactions, so a
StopTransaction after a gateway restart still finds its charger and connector; and where open
OCPP 2.0.1 transactions (ids the chargers choose) run, so their later TransactionEvents, which
name no EVSE, keep theirs after a restart (:attr:`TransactionStore.located`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

EPOCH_S = 1_735_689_600  # 2025-01-01T00:00:00Z
INT32_MAX = 2**31 - 1


class TransactionStore:
    def __init__(
        self, path: Path, *, max_open: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = path
        self._max_open = max_open
        self._clock = clock
        self._lock = asyncio.Lock()
        self.last_id = 0
        self.open: dict[int, tuple[str, int]] = {}
        #: (charger, 2.0.1 transaction id) -> (evse, connector) of open 2.0.1 transactions.
        self.located: dict[tuple[str, str], tuple[int, int]] = {}
        self._load()

    def _load(self) -> None:
        try:
            state = orjson.loads(self._path.read_bytes())
            self.last_id = int(state["last_id"])
            self.open = {int(k): (str(v[0]), int(v[1])) for k, v in state["open"].items()}
            self.located = {
                (str(c), str(t)): (int(e), int(k)) for c, t, e, k in state.get("located", ())
            }
        except FileNotFoundError:
            return
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            # Ids stay unique through the clock floor; only open transactions are forgotten.
            log.error("ocpp state %s unreadable (%s): starting from the clock", self._path, exc)
            self.last_id, self.open, self.located = 0, {}, {}

    def _save(self) -> None:
        body = orjson.dumps(
            {
                "last_id": self.last_id,
                "open": {str(k): list(v) for k, v in self.open.items()},
                "located": [[*key, *where] for key, where in self.located.items()],
            }
        )
        tmp = self._path.with_name(self._path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self._path)
        dir_fd = os.open(self._path.parent.resolve(), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def start(self, charger_id: str, connector_id: int) -> int:
        """Allocate an id for a new transaction; it is on disk when this returns."""
        async with self._lock:
            floor = int(self._clock()) - EPOCH_S
            tid = max(self.last_id + 1, floor, 1)
            if tid > INT32_MAX:
                raise OverflowError("OCPP 1.6 transaction ids are exhausted (int32)")
            self.last_id = tid
            self.open[tid] = (charger_id, connector_id)
            while len(self.open) > self._max_open:
                del self.open[next(iter(self.open))]
            await asyncio.to_thread(self._save)
            return tid

    async def stop(self, transaction_id: int) -> tuple[str, int] | None:
        """Forget an open transaction; its (charger, connector) if it was known."""
        async with self._lock:
            where = self.open.pop(transaction_id, None)
            if where is not None:
                await asyncio.to_thread(self._save)
            return where

    async def locate(
        self, charger_id: str, transaction_id: str, evse_id: int, connector_id: int
    ) -> None:
        """Keep where an open 2.0.1 transaction runs (written only when it is new or moved)."""
        key, where = (charger_id, transaction_id), (evse_id, connector_id)
        async with self._lock:
            if self.located.get(key) == where:
                return
            self.located.pop(key, None)
            self.located[key] = where
            while len(self.located) > self._max_open:
                del self.located[next(iter(self.located))]
            await asyncio.to_thread(self._save)

    async def unlocate(self, charger_id: str, transaction_id: str) -> None:
        """Forget an ended 2.0.1 transaction."""
        async with self._lock:
            if self.located.pop((charger_id, transaction_id), None) is not None:
                await asyncio.to_thread(self._save)
