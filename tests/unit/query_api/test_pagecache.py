"""query_api.pagecache: reuse within the TTL, one build for concurrent requests, failures not
cached, a byte bound with least-recently-used eviction."""

from __future__ import annotations

import asyncio

import pytest

from query_api.pagecache import STALE_FACTOR, PageCache


async def page(cache: PageCache, key: str, mono: float, build: Builder) -> bytes:
    return await cache.get(key, mono, build)


class Builder:
    def __init__(self, page: bytes = b"page", fail: Exception | None = None) -> None:
        self.calls = 0
        self.page = page
        self.fail = fail
        self.release = asyncio.Event()

    async def __call__(self) -> bytes:
        self.calls += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return self.page


async def test_concurrent_requests_share_one_build_and_the_ttl_bounds_reuse() -> None:
    """Ten requests for a page being built cause one build; within ttl_s the page is reused;
    from ttl_s the old page is served while one rebuild runs, then the new page."""
    cache = PageCache(ttl_s=5.0, max_bytes=1000, spread=0.0)
    build = Builder()
    waiting = [asyncio.ensure_future(page(cache, "k", 100.0, build)) for _ in range(10)]
    await asyncio.sleep(0)
    build.release.set()
    assert await asyncio.gather(*waiting) == [b"page"] * 10
    assert build.calls == 1
    assert await page(cache, "k", 104.9, build) == b"page"
    assert build.calls == 1
    rebuild = Builder(page=b"new")
    assert await page(cache, "k", 105.0, rebuild) == b"page"  # stale, rebuilding
    assert await page(cache, "k", 105.1, rebuild) == b"page"  # still rebuilding: no second build
    rebuild.release.set()
    for _ in range(5):  # the build task finishes, then its done callback stores the page
        await asyncio.sleep(0)
    assert await page(cache, "k", 105.2, rebuild) == b"new"
    assert rebuild.calls == 1
    assert (cache.misses, cache.stale) == (2, 2)


async def test_a_page_past_the_stale_bound_is_waited_for() -> None:
    """A page older than STALE_FACTOR * ttl_s is not served: the request waits for the build."""
    cache = PageCache(ttl_s=5.0, max_bytes=1000, spread=0.0)
    first = Builder(page=b"old")
    first.release.set()
    await page(cache, "k", 0.0, first)
    late = Builder(page=b"new")
    pending = asyncio.ensure_future(page(cache, "k", STALE_FACTOR * 5.0, late))
    await asyncio.sleep(0)
    assert not pending.done()
    late.release.set()
    assert await pending == b"new"


async def test_a_failed_build_reaches_every_waiter_and_is_not_cached() -> None:
    """The error of the one build is raised to each waiting request; the next request builds
    again."""
    cache = PageCache(ttl_s=5.0, max_bytes=1000, spread=0.0)
    build = Builder(fail=RuntimeError("influx down"))
    waiting = [asyncio.ensure_future(page(cache, "k", 0.0, build)) for _ in range(3)]
    await asyncio.sleep(0)
    build.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    build.fail = None
    assert await page(cache, "k", 0.1, build) == b"page"
    assert build.calls == 2
    assert len(cache) == 1


async def test_a_client_going_away_does_not_cancel_the_build_for_the_others() -> None:
    """Cancelling the request that started a build leaves the build running for the rest."""
    cache = PageCache(ttl_s=5.0, max_bytes=1000, spread=0.0)
    build = Builder()
    first = asyncio.ensure_future(page(cache, "k", 0.0, build))
    second = asyncio.ensure_future(page(cache, "k", 0.0, build))
    await asyncio.sleep(0)
    first.cancel()
    build.release.set()
    assert await second == b"page"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert build.calls == 1


async def test_the_byte_bound_evicts_the_least_recently_used_page() -> None:
    """Pages beyond max_bytes push out the least recently used; a page larger than the whole
    bound is served but not kept."""
    cache = PageCache(ttl_s=60.0, max_bytes=10)
    for key in ("a", "b"):
        build = Builder(page=b"x" * 4)
        build.release.set()
        await page(cache, key, 0.0, build)
    hit = Builder()
    await page(cache, "a", 1.0, hit)  # a is now the most recently used
    third = Builder(page=b"y" * 4)
    third.release.set()
    await page(cache, "c", 1.0, third)
    assert len(cache) == 2
    assert cache.size_bytes == 8
    again = Builder(page=b"z")
    again.release.set()
    await page(cache, "b", 2.0, again)
    assert again.calls == 1  # b was evicted
    huge = Builder(page=b"h" * 11)
    huge.release.set()
    assert await page(cache, "h", 2.0, huge) == b"h" * 11
    assert cache.size_bytes <= 10


async def test_pages_built_together_expire_at_different_times_within_the_ttl() -> None:
    """Each page is fresh for between half of ttl_s and all of it: 50 pages built at once are
    not all rebuilt at once, and none is reused past ttl_s."""
    cache = PageCache(ttl_s=10.0, max_bytes=100_000)
    for k in range(50):
        first = Builder(page=b"old")
        first.release.set()
        await page(cache, str(k), 0.0, first)
    fresh_at = {}
    for k in range(50):
        assert await page(cache, str(k), 4.99, Builder()) == b"old"  # all fresh before ttl/2
        held = cache._pages[str(k)][0]
        fresh_at[k] = held + 10.0
    assert all(5.0 <= t <= 10.0 for t in fresh_at.values())
    assert len({round(t, 3) for t in fresh_at.values()}) > 25
