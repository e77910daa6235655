"""``Idempotency-Key`` of ``POST /v1/telemetry``: a retried request reuses its seqs.

A key is remembered per ingest gateway with the digest of the request's readings and the seqs
reserved for them. A request that brings a known key back:

- with other readings: 422 ``idempotency-key-mismatch``;
- while the request that first brought it is still running: 409 ``idempotency-key-in-use``;
- after that request was answered 200: the same answer again, nothing published;
- otherwise (the earlier attempt failed or timed out): its readings are published again with the
  same seqs, so a replay overwrites the same points and the bridge sees no new seqs.

Keys are kept for ``INGEST_IDEMPOTENCY_TTL_S`` and at most ``INGEST_IDEMPOTENCY_MAX_KEYS`` of them
(the oldest go first). With ``INGEST_SEQ_FILE`` they survive a restart: each new key is appended
(with fsync, before its readings are published) to a journal of JSON lines next to it,
``<INGEST_SEQ_FILE>.keys``, which is rewritten compactly when it has grown to twice the keys
kept. Completions are appended without fsync: one lost in a crash costs a replay, not a reading.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from query_api.seqs import write_durably

log = logging.getLogger(__name__)

#: What an Idempotency-Key may be (a UUID, a ULID, base64...); RFC 8941 quotes are taken off.
KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9._~:+/=-]{8,128}$")


def parse_key(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (None without one); ValueError if invalid."""
    if header is None:
        return None
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not KEY_PATTERN.fullmatch(value):
        raise ValueError(
            "Idempotency-Key must be 8 to 128 characters of A-Z a-z 0-9 . _ ~ : + / = -"
        )
    return value


def digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()[:32]


@dataclass(slots=True)
class KeyEntry:
    gateway_id: str
    key: str
    digest: str
    first_seq: int
    count: int
    expires: float  # wall-clock seconds: it is persisted
    done: bool = False
    busy: bool = False  # a request is handling it (not persisted)

    def record(self) -> dict[str, Any]:
        return {"g": self.gateway_id, "k": self.key, "d": self.digest, "f": self.first_seq,
                "n": self.count, "e": self.expires}  # fmt: skip


class IdempotencyKeys:
    """The keys of recent ingest requests, bounded by age and number, optionally journaled."""

    def __init__(self, journal: Path | None, *, ttl_s: float, max_keys: int) -> None:
        self._file = journal
        self._ttl_s = ttl_s
        self._max = max_keys
        self._entries: OrderedDict[tuple[str, str], KeyEntry] = OrderedDict()
        self._lines = 0
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, gateway_id: str, key: str) -> KeyEntry | None:
        entry = self._entries.get((gateway_id, key))
        if entry is not None and entry.expires <= time.time() and not entry.busy:
            del self._entries[(gateway_id, key)]
            return None
        return entry

    async def add(
        self, gateway_id: str, key: str, body_digest: str, first_seq: int, count: int
    ) -> KeyEntry:
        """A new key (busy), on disk before it returns when journaled."""
        entry = KeyEntry(gateway_id, key, body_digest, first_seq, count, time.time() + self._ttl_s)
        entry.busy = True
        self._entries[(gateway_id, key)] = entry
        self._evict()
        try:
            await self._append(entry.record(), sync=True)
        except BaseException:
            self._entries.pop((gateway_id, key), None)  # not on disk: not promised
            raise
        return entry

    async def complete(self, entry: KeyEntry) -> None:
        if entry.done:
            return
        entry.done = True
        if self._entries.get((entry.gateway_id, entry.key)) is entry:
            await self._append({"g": entry.gateway_id, "k": entry.key, "done": True}, sync=False)

    async def drop(self, entry: KeyEntry) -> None:
        """Forget ``entry`` (its seqs were given back: nothing of it was published)."""
        if self._entries.get((entry.gateway_id, entry.key)) is entry:
            del self._entries[(entry.gateway_id, entry.key)]
            await self._append({"g": entry.gateway_id, "k": entry.key, "drop": True}, sync=True)

    def _evict(self) -> None:
        """The expired keys and the oldest beyond the bound go (never one a request holds)."""
        now = time.time()
        excess = len(self._entries) - self._max
        gone = []
        for at, entry in self._entries.items():  # oldest first: the order they were added
            if entry.busy:
                continue
            if excess > 0:
                excess -= 1
            elif entry.expires > now:
                break
            gone.append(at)
        for at in gone:
            del self._entries[at]

    # -- the journal -------------------------------------------------------------------------
    def _load(self) -> None:
        if self._file is None or not self._file.is_file():
            return
        now = time.time()
        for line in self._file.read_bytes().splitlines():
            self._lines += 1
            try:
                rec = orjson.loads(line)
                at = (str(rec["g"]), str(rec["k"]))
                if rec.get("drop"):
                    self._entries.pop(at, None)
                elif rec.get("done"):
                    if at in self._entries:
                        self._entries[at].done = True
                else:
                    self._entries[at] = KeyEntry(
                        at[0], at[1], str(rec["d"]), int(rec["f"]), int(rec["n"]), float(rec["e"])
                    )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("skipping an unreadable line of %s", self._file)  # a torn last line
        for at in [at for at, e in self._entries.items() if e.expires <= now]:
            del self._entries[at]
        self._evict()

    async def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        if self._file is None:
            return
        self._lines += 1
        if self._lines > max(2 * len(self._entries), 1000):
            self._lines = len(self._entries) + sum(e.done for e in self._entries.values())
            await asyncio.to_thread(write_durably, self._file, self._snapshot())
            return
        await asyncio.to_thread(_append_line, self._file, orjson.dumps(record) + b"\n", sync)

    def _snapshot(self) -> bytes:
        out = bytearray()
        for e in self._entries.values():
            out += orjson.dumps(e.record()) + b"\n"
            if e.done:
                out += orjson.dumps({"g": e.gateway_id, "k": e.key, "done": True}) + b"\n"
        return bytes(out)


def _append_line(path: Path, line: bytes, sync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
