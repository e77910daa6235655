"""The InfluxDB output: a batch's lines written until stored, or refused line by line.

- A batch goes in requests of at most ``max_lines`` lines (evenly split), ``concurrency`` at a
  time: InfluxDB ingests on several cores, and one request stays far below its body limit (25 MB
  by default in 1.x; a write that large is dropped as a connection error and would be retried
  forever).
- 5xx, timeouts and connection errors (:class:`WriteUnavailableError`) are retried with capped,
  jittered backoff; nothing is acknowledged meanwhile (guarantee 1).
- A refused request (:class:`WriteRejectedError`: 400/413/422) is bisected, so that only the
  offending lines are returned, each with InfluxDB's reason (guarantee 4).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from processor.metrics import Metrics
from telemetry_common.influx_write import InfluxWriter, WriteRejectedError, WriteUnavailableError

log = logging.getLogger(__name__)


class InfluxOutput:
    def __init__(
        self,
        writer: InfluxWriter,
        metrics: Metrics,
        *,
        max_lines: int = 10_000,
        concurrency: int = 2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._max_lines = max_lines
        self._slots = asyncio.Semaphore(concurrency)
        self._max_backoff_s = max_backoff_s

    async def write(self, lines: list[str], *, rp: str | None = None) -> dict[str, str]:
        """Store ``lines`` (``rp``: in that retention policy, not the default); return the lines
        InfluxDB refused for good, each with its reason."""
        if not lines:
            return {}
        chunks = -(-len(lines) // self._max_lines)
        size = -(-len(lines) // chunks)
        results = await asyncio.gather(
            *(self._write_in_slot(lines[i : i + size], rp) for i in range(0, len(lines), size))
        )
        return {line: err for result in results for line, err in result}

    async def _write_in_slot(self, lines: list[str], rp: str | None) -> list[tuple[str, str]]:
        async with self._slots:
            return await self._write(lines, rp)

    async def _write(self, lines: list[str], rp: str | None = None) -> list[tuple[str, str]]:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await self._writer.write(lines, rp=rp)
            except WriteRejectedError as exc:
                self._metrics.set_influx_ok(True)
                if len(lines) == 1:
                    return [(lines[0], exc.detail)]
                mid = len(lines) // 2
                return await self._write(lines[:mid], rp) + await self._write(lines[mid:], rp)
            except WriteUnavailableError as exc:
                self._metrics.set_influx_ok(False)
                self._metrics.write_retries.inc()
                log.warning("InfluxDB write failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                delay = min(delay * 2, self._max_backoff_s)
            else:
                self._metrics.set_influx_ok(True)
                self._metrics.write_seconds.observe(time.perf_counter() - started)
                return []
