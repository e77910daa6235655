"""The jobs' loop of passes: a stop ends a pass in progress instead of waiting for it."""

from __future__ import annotations

import asyncio

from telemetry_common.job_command import run_passes


async def test_a_stop_cancels_the_pass_in_progress() -> None:
    """SIGTERM in the middle of a long pass (a loaded InfluxDB): the pass is cancelled at its
    next await, not waited for (telemetry-stack down had to SIGKILL the jobs after 15 s)."""
    stop = asyncio.Event()
    started, cancelled, finished = asyncio.Event(), [], []

    async def one_pass() -> bool:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finished.append(True)
        return True

    loop = asyncio.create_task(run_passes(one_pass, interval_s=60, stop=stop, once=False))
    await started.wait()
    stop.set()
    assert await asyncio.wait_for(loop, 30) is True
    assert cancelled == [True]
    assert finished == []


async def test_passes_repeat_until_stop_and_once_returns_the_result() -> None:
    stop = asyncio.Event()
    results = [True, False]

    async def one_pass() -> bool:
        if results:
            return results.pop(0)
        stop.set()
        return True

    assert await run_passes(one_pass, interval_s=0, stop=stop, once=False) is True
    assert results == []

    async def failing() -> bool:
        return False

    assert await run_passes(failing, interval_s=0, stop=asyncio.Event(), once=True) is False
