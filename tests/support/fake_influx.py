"""Fakes shared by the unit tests (pure logic only; integration tests use real servers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from telemetry_common.influx_query import Series


class FakeInflux:
    """Records each query; answers with the queued results (or raises the queued error)."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.answers: list[list[Series] | Exception] = []

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.query(q)

    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query(self, q: str) -> list[Series]:
        self.queries.append(q)
        answer = self.answers.pop(0) if self.answers else []
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class FixedClock:
    """A clock for ``create_app(clock=...)`` that says what the test sets (``monotonic`` None:
    the real monotonic clock)."""

    wall: datetime
    monotonic: float | None = None

    def now(self) -> datetime:
        return self.wall

    def mono(self) -> float:
        return time.monotonic() if self.monotonic is None else self.monotonic
