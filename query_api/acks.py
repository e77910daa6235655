"""Waiting for the bridges' stored acknowledgements of HTTP-ingested readings.

After committing, each bridge publishes on ``{root}/{gateway_id}/stored`` (QoS 1) which seqs of
the gateway it handled: ``{"epoch": null, "seqs": [[first, last], ...]}`` (docs/design.md,
"Stored acknowledgements"; every seq in the inclusive ranges is stored in InfluxDB or
dead-lettered). The API subscribes to the stored topics of its ingest gateways only (not
``+/stored``: an edge gateway's acknowledgements are none of its business). A request registers
the seqs it publishes (:meth:`StoredAcks.expect`) *before* publishing, and :meth:`wait` returns
True once acknowledgements covering every one of them arrived (several bridges each acknowledge
their share; repeated seqs are harmless).

Acknowledgements are not remembered beyond the requests waiting for them: the API's session is
clean, so an acknowledgement published while it was disconnected is lost to it, and the request
then times out (503); the client's retry (with its ``Idempotency-Key``, the same seqs) is stored
again and acknowledged again.

Each API process sends its batches under an epoch of its own (random at start): an
acknowledgement counts only for that epoch. Without it, an acknowledgement of readings an
earlier process (or a publish paho sent late) numbered with the same seqs would answer a
request whose own readings are not stored yet (seqs are reused when the seq file is unset).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from telemetry_common.stored_ack import decode
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

#: Most ranges of one acknowledgement looked at (a bridge coalesces; more is not an ack of ours).
MAX_RANGES = 10_000


@dataclass(eq=False, slots=True)
class Waiter:
    """Seqs of one gateway still unacknowledged, as sorted disjoint inclusive ranges."""

    gateway_id: str
    missing: list[tuple[int, int]]
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def subtract(self, first: int, last: int) -> None:
        out: list[tuple[int, int]] = []
        for a, b in self.missing:
            if last < a or first > b:
                out.append((a, b))
                continue
            if a < first:
                out.append((a, first - 1))
            if last < b:
                out.append((last + 1, b))
        self.missing = out
        if not out:
            self.done.set()


def parse_ack(payload: bytes, epoch: str | None = None) -> list[tuple[int, int]] | None:
    """The ranges of an acknowledgement of ``epoch``; None if it is not one (or of another)."""
    try:
        theirs, ranges = decode(payload, max_ranges=MAX_RANGES)
    except ValueError:
        return None
    return ranges if theirs == epoch else None


class StoredAcks:
    """Acknowledgements of the ingest ``gateways``, handed to the requests waiting for them."""

    def __init__(self, topics: Topics, gateways: Iterable[str], epoch: str | None = None) -> None:
        """``epoch``: this process's (None: a new random one)."""
        self.epoch = epoch if epoch is not None else secrets.token_hex(8)
        self._gateway_of = {topics.stored(g): g for g in gateways}
        self._waiting: dict[str, set[Waiter]] = {}
        #: Acknowledgements taken, and messages on our topics that were not acknowledgements.
        self.applied = 0
        self.refused = 0

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(sorted(self._gateway_of))

    def handles(self, topic: str) -> bool:
        return topic in self._gateway_of

    def expect(self, gateway_id: str, first: int, last: int) -> Waiter:
        """Register seqs ``first..last`` of ``gateway_id`` (before publishing them)."""
        waiter = Waiter(gateway_id, [(first, last)])
        self._waiting.setdefault(gateway_id, set()).add(waiter)
        return waiter

    def forget(self, waiter: Waiter) -> None:
        waiting = self._waiting.get(waiter.gateway_id)
        if waiting is not None:
            waiting.discard(waiter)
            if not waiting:
                del self._waiting[waiter.gateway_id]

    async def wait(self, waiter: Waiter, timeout_s: float) -> bool:
        """True once every seq of ``waiter`` is acknowledged; False after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await waiter.done.wait()
        except TimeoutError:
            return False
        finally:
            self.forget(waiter)
        return True

    def apply(self, topic: str, payload: bytes) -> bool:
        """Take one message of a stored topic; False if it is not an acknowledgement of ours."""
        gateway_id = self._gateway_of.get(topic)
        ranges = parse_ack(payload, self.epoch) if gateway_id is not None else None
        if gateway_id is None or ranges is None:
            self.refused += 1
            log.debug("ignoring a message on %s: not a stored acknowledgement of ours", topic)
            return False
        self.applied += 1
        for waiter in list(self._waiting.get(gateway_id, ())):
            for first, last in ranges:
                waiter.subtract(first, last)
                if not waiter.missing:
                    break
        return True
