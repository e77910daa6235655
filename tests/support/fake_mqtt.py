"""A stand-in for the edge's MQTT client whose PUBACKs the test answers one by one (unit tests
of the publisher's outcomes; the real broker path is in tests/integration and tests/system)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson


class FakeBroker:
    """Stands in for the MQTT client: holds each PUBLISH until the test answers it."""

    def __init__(self) -> None:
        self.connected = True
        self.connects = 1
        self.sent: list[tuple[list[int], asyncio.Future[None]]] = []

    async def wait_connected(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append(([r["seq"] for r in orjson.loads(payload)["readings"]], fut))
        await fut

    def answer(self, i: int, error: Exception | None = None) -> None:
        fut = self.sent[i][1]
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


async def until(what: str, check: Callable[[], bool]) -> None:
    """Poll ``check`` every 10 ms for at most 5 s."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")
