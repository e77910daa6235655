"""The newest stored reading of chargers the mirror cannot answer for, asked of InfluxDB in
batches.

Right after many new chargers are stored, none of them is trusted in the mirror yet (their live
values have not settled or not been confirmed), and every ``latest`` asks InfluxDB. One query per
request made those answers queue behind each other (p99 ~350 ms at 50 clients). Here a lookup
waits for the next query instead: at most ``in_flight`` queries run at once, and every lookup
that arrives meanwhile is answered by the next one, for up to ``max_batch`` chargers
(:func:`telemetry_common.influxql.latest_per_charger_query`). Lookups of one charger waiting for
the same query share it.

A lookup never joins a query that was already sent: that answer could be older than what
InfluxDB holds when the request came in, and ``latest`` means newest.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Final

from query_api.latest.snapshot import Snapshot, from_row
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL

#: Queries running at once (InfluxDB answers a batch in about the time of one charger).
IN_FLIGHT: Final = 2
#: Most chargers asked in one query (the query travels in the URL of a GET).
MAX_BATCH: Final = 200


class StoredLatest:
    def __init__(
        self, influx: InfluxQL, *, in_flight: int = IN_FLIGHT, max_batch: int = MAX_BATCH
    ) -> None:
        self._influx = influx
        self._max_in_flight = in_flight
        self._max_batch = max_batch
        self._waiting: dict[str, asyncio.Future[Snapshot | None]] = {}
        self._queries: set[asyncio.Task[None]] = set()
        self._send_scheduled = False

    async def newest(self, charger_id: str) -> Snapshot | None:
        """The charger's newest stored reading (None: nothing stored), as InfluxDB holds it at
        some moment after this call; InfluxDB's errors are raised here."""
        future = self._waiting.get(charger_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._waiting[charger_id] = future
            self._schedule()
        # shielded: a request that goes away does not cancel the answer of the others
        return await asyncio.shield(future)

    def _schedule(self) -> None:
        """Send the waiting lookups on the next turn of the loop (so the lookups of this turn
        go together), if a query may start."""
        if self._send_scheduled or not self._waiting:
            return
        if len(self._queries) >= self._max_in_flight:
            return  # the end of a running query sends them
        self._send_scheduled = True
        asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._send_scheduled = False
        ids = list(itertools.islice(self._waiting, self._max_batch))
        batch = {charger_id: self._waiting.pop(charger_id) for charger_id in ids}
        task = asyncio.create_task(self._answer(batch), name="latest-lookup")
        self._queries.add(task)
        task.add_done_callback(self._done)
        self._schedule()  # more than a batch waiting, and a query may still start

    def _done(self, task: asyncio.Task[None]) -> None:
        self._queries.discard(task)
        self._schedule()

    async def _answer(self, batch: dict[str, asyncio.Future[Snapshot | None]]) -> None:
        try:
            series = await self._influx.query(influxql.latest_per_charger_query(list(batch)))
            found: dict[str, Snapshot] = {}
            for s in series:
                charger_id = s.tags.get("charger_id")
                rows = s.rows()
                if charger_id in batch and rows:
                    found[charger_id] = from_row(charger_id, rows[0])
            for charger_id, future in batch.items():
                if not future.done():
                    future.set_result(found.get(charger_id))
        except Exception as exc:  # every lookup of the batch gets the error
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
        finally:  # cancelled (the app stops): nobody waits forever
            for future in batch.values():
                future.cancel()


def _retrieve(future: asyncio.Future[Snapshot | None]) -> None:
    """Mark an error as seen even when every request that waited for it went away."""
    if not future.cancelled():
        future.exception()
