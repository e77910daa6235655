"""Rendered downsampled history pages, kept for a few seconds (``HISTORY_CACHE_S``).

A chart asks for the same "last 24 h as 5-minute means" again and again; InfluxDB 1.x computes
each such answer from ~1,440 points per field, which bounds a whole server at a few dozen
answers per second. The cache holds the JSON bytes of each page, bounded in total bytes (least
recently used evicted first). A page is fresh for ``ttl_s``; after that it is rebuilt in the
background while the old one is still served, up to ``STALE_FACTOR * ttl_s`` (so a page lags
InfluxDB by at most ``ttl_s`` plus one rebuild, and never more than that bound). Each page is
fresh for a random part of ``ttl_s`` (between half and all of it: ``spread``), so pages built
together (a dashboard's, or a load of many chargers' at start) do not expire together and their
rebuilds do not hold the event loop in one burst every ``ttl_s``. Concurrent requests for a page
being built wait for that one query instead of sending their own.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Final

#: A page up to this many times ``ttl_s`` old is served while its rebuild runs.
STALE_FACTOR: Final = 3.0


class PageCache:
    def __init__(self, ttl_s: float, max_bytes: int, *, spread: float = 0.5) -> None:
        self.ttl_s = ttl_s
        #: A page is fresh for ``ttl_s * (1 - U(0, spread))``.
        self.spread = spread
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._building: dict[Hashable, asyncio.Future[bytes]] = {}
        self._jitter = random.Random()  # noqa: S311 (spreading expiries, not crypto)
        self.hits = 0
        self.misses = 0
        self.stale = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: Hashable, mono: float, build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The page of ``key``:

        - younger than ``ttl_s`` at ``mono``: the cached page;
        - older, but younger than ``STALE_FACTOR * ttl_s``: the cached page, while one rebuild
          runs in the background (so pages that expire together do not send a burst of
          queries that every viewer waits for);
        - otherwise ``build()`` and wait for it.

        A build runs once per key, in a task of its own: whoever asks meanwhile waits for it,
        and a client that goes away does not cancel it for the others. A failed build is not
        cached; its error reaches every request that waited for it.
        """
        held = self._pages.get(key)
        age = mono - held[0] if held is not None else float("inf")
        if held is not None and age < self.ttl_s:
            self._pages.move_to_end(key)
            self.hits += 1
            return held[1]
        task = self._building.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(build())
            self._building[key] = task
            task.add_done_callback(lambda t: self._built(key, mono, t))
        else:
            self.hits += 1
        if held is not None and age < STALE_FACTOR * self.ttl_s:
            self.stale += 1
            return held[1]
        return await asyncio.shield(task)

    def _built(self, key: Hashable, mono: float, task: asyncio.Future[bytes]) -> None:
        self._building.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._put(key, mono, task.result())

    def _put(self, key: Hashable, mono: float, page: bytes) -> None:
        if len(page) > self.max_bytes:
            return
        old = self._pages.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        # Stamped as built up to ``spread`` of a ttl earlier: it expires that much sooner.
        self._pages[key] = (mono - self._jitter.uniform(0.0, self.ttl_s * self.spread), page)
        self._bytes += len(page)
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._pages.popitem(last=False)
            self._bytes -= len(evicted)
