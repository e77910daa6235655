"""``seq`` numbers of HTTP-ingested readings: unique, increasing and dense per gateway.

docs/design.md wants each gateway's ``seq`` unique and increasing, and the bridge reports jumps as
gaps, so the API numbers the readings of each ingest gateway itself (the client's ``seq``, if
any, is replaced):

- The first ingest for a gateway after a start continues from the highest of: the seq InfluxDB
  holds for that gateway (the newest-stored state and the last hour's readings; all its history
  only when neither knows the gateway nor the file does), and the last one recorded in
  ``TELEMETRY_API_INGEST_SEQ_FILE``. The file covers readings the broker accepted but the
  bridge has not stored yet.
- Requests of one gateway are numbered one at a time (a lock per gateway held across the
  publish), so seqs reach the broker in order.
- A reservation is written to the file before publishing. If the broker certainly did not take
  the readings (not connected, refused, or no subscriber: PUBACK 0x10), it is released and the
  numbers are used again; if the connection dropped before the PUBACK, the numbers stay used
  (the readings may be stored), and the bridge may report them as a gap when they were not.
- A request with an ``Idempotency-Key`` (:mod:`query_api.idempotency`) keeps its seqs for its
  retries: they are released only if nothing of it was published.
- One API process per ingest gateway: two processes numbering one gateway would collide.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from query_api.settings import ApiSettings
from telemetry_common import influxql
from telemetry_common.errors import ConfigError
from telemetry_common.files import write_atomic
from telemetry_common.influx_query import InfluxQL
from telemetry_common.newest_state import gateway_highest_seq
from telemetry_common.settings import env_name


class SeqAllocator:
    def __init__(self, influx: InfluxQL, state_file: Path | None) -> None:
        self._influx = influx
        self._file = state_file
        self._next: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._recorded: dict[str, int] = self._load()

    def lock(self, gateway_id: str) -> asyncio.Lock:
        """Hold it from :meth:`reserve` until the publish is settled."""
        return self._locks.setdefault(gateway_id, asyncio.Lock())

    async def reserve(self, gateway_id: str, count: int) -> int:
        """The first of ``count`` new seqs (raises InfluxError if the start cannot be known)."""
        if gateway_id not in self._next:
            self._next[gateway_id] = await self._start(gateway_id)
        first = self._next[gateway_id]
        self._next[gateway_id] = first + count
        await self._record(gateway_id, first + count - 1)
        return first

    async def release(self, gateway_id: str, first: int, end: int) -> None:
        """Seqs ``first`` up to ``end`` (excluded) were not sent: they will be used again, if
        they are the last ones reserved (else, as seqs of an earlier request that a retry with
        its Idempotency-Key may publish, they stay used)."""
        if first < end == self._next.get(gateway_id):
            self._next[gateway_id] = first
            await self._record(gateway_id, first - 1)

    async def _start(self, gateway_id: str) -> int:
        stored = await gateway_highest_seq(self._influx, gateway_id)
        if stored is None and gateway_id not in self._recorded:
            # Neither the state nor the recent window nor the file knows it: a new gateway (the
            # index answers at once) or one of a database written before the state.
            series = await self._influx.query(influxql.gateway_highest_seq_query(gateway_id))
            seqs = [r.get("seq") for s in series for r in s.rows()]
            stored = max((int(x) for x in seqs if x is not None), default=0)
        return max(stored or 0, self._recorded.get(gateway_id, 0)) + 1

    def _load(self) -> dict[str, int]:
        if self._file is None or not self._file.is_file():
            return {}
        raw = orjson.loads(self._file.read_bytes())
        if not isinstance(raw, dict):
            setting = env_name(ApiSettings, "ingest_seq_file")
            raise ConfigError(setting, f"{self._file}: not a JSON object")
        return {str(k): int(v) for k, v in raw.items()}

    async def _record(self, gateway_id: str, last: int) -> None:
        self._recorded[gateway_id] = last
        if self._file is not None:
            await asyncio.to_thread(write_durably, self._file, orjson.dumps(self._recorded))


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` on disk (0600; fsync of the file and the
    folder), making its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)
