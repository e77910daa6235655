"""The InfluxDB output: a batch's lines written until stored, or refused line by line.

- A batch goes in requests of at most ``max_lines`` lines (evenly split), ``concurrency`` at a
  time: InfluxDB ingests on several cores, and one request stays far below its body limit (25 MB
  by default in 1.x; a write that large is dropped as a connection error and would be retried
  forever).
- 5xx, timeouts and connection errors (:class:`WriteUnavailableError`) are retried with capped,
  jittered backoff; nothing is acknowledged meanwhile (guarantee 1).
- A refused request (:class:`WriteRejectedError`: 400/413/422) is bisected, so that only the
  offending lines are returned, each with InfluxDB's reason (guarantee 4).
- A request refused for cardinality (InfluxDB 1.x's ``max-values-per-tag`` or
  ``max-series-per-database``, :func:`cardinality_limit`) is a *partial write*: InfluxDB stored
  every point of an existing series and dropped those of new series, naming one of them. It is
  bisected by *groups* (the caller's messages), not by lines: a group refused on its own is
  returned whole with the reason, and the groups beside it are written again (a point is its
  series and time: writing it twice stores it once). One bad message among ``m`` costs about
  ``2 log2(m)`` requests, instead of about two per line of the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Final

from processor.limits import INFLUX_MAX_SERIES_PER_DATABASE, INFLUX_MAX_VALUES_PER_TAG
from processor.metrics import Metrics
from telemetry_common.influx_write import InfluxWriter, WriteRejectedError, WriteUnavailableError

log = logging.getLogger(__name__)

#: InfluxDB 1.x's answers (400) when a write would exceed its cardinality limits, e.g.
#: ``partial write: max-values-per-tag limit exceeded (9/5): measurement="readings"
#: tag="charger_id" value="c99" dropped=1`` and ``partial write: max-series-per-database limit
#: exceeded: (12) dropped=10`` (1.6; the other points of the request are stored).
_CARDINALITY: Final = (
    (re.compile(r"max-values-per-tag limit exceeded"), INFLUX_MAX_VALUES_PER_TAG),
    (re.compile(r"max-series-per-database limit exceeded"), INFLUX_MAX_SERIES_PER_DATABASE),
)


def cardinality_limit(detail: str) -> str | None:
    """Which of InfluxDB's cardinality limits refused a write (its error text), or None."""
    for pattern, limit in _CARDINALITY:
        if pattern.search(detail):
            return limit
    return None


def _split(groups: Sequence[int], n: int) -> tuple[list[int], list[int]]:
    """Group sizes of the first ``n`` lines and of the rest (a group across the cut is cut)."""
    left: list[int] = []
    for k, size in enumerate(groups):
        if n <= 0:
            return left, list(groups[k:])
        if size > n:
            return [*left, n], [size - n, *groups[k + 1 :]]
        left.append(size)
        n -= size
    return left, []


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

    async def write(
        self, lines: list[str], *, rp: str | None = None, groups: Sequence[int] | None = None
    ) -> dict[str, str]:
        """Store ``lines`` (``rp``: in that retention policy, not the default); return the lines
        InfluxDB refused for good, each with its reason. ``groups``: the sizes of consecutive
        groups of lines (e.g. one per message) that a cardinality refusal refuses whole
        (default: each request is one group)."""
        if not lines:
            return {}
        chunks = -(-len(lines) // self._max_lines)
        size = -(-len(lines) // chunks)
        rest: list[int] | None = list(groups) if groups is not None else None
        parts = []
        for i in range(0, len(lines), size):
            part = lines[i : i + size]
            mine: list[int] | None = None
            if rest is not None:
                mine, rest = _split(rest, len(part))
            parts.append(self._write_in_slot(part, rp, mine))
        results = await asyncio.gather(*parts)
        return {line: err for result in results for line, err in result}

    async def _write_in_slot(
        self, lines: list[str], rp: str | None, groups: list[int] | None
    ) -> list[tuple[str, str]]:
        async with self._slots:
            return await self._write(lines, rp, groups)

    async def _write(
        self, lines: list[str], rp: str | None = None, groups: list[int] | None = None
    ) -> list[tuple[str, str]]:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await self._writer.write(lines, rp=rp)
            except WriteRejectedError as exc:
                self._metrics.set_influx_ok(True)
                if len(lines) == 1:
                    return [(lines[0], exc.detail)]
                left: list[int] | None
                right: list[int] | None
                if cardinality_limit(exc.detail) is not None:
                    if groups is None or len(groups) <= 1:
                        return [(line, exc.detail) for line in lines]
                    half = len(groups) // 2
                    mid = sum(groups[:half])
                    left, right = groups[:half], groups[half:]
                else:
                    mid = len(lines) // 2
                    left, right = _split(groups, mid) if groups is not None else (None, None)
                return await self._write(lines[:mid], rp, left) + await self._write(
                    lines[mid:], rp, right
                )
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
