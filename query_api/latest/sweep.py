"""The mirror sweep: every ``latest_sweep_s`` one InfluxDB query (the charger index's) confirms
every settled value in the mirror, instead of one query per charger and request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from query_api.latest.index import SWEEP_SLICE, ChargerIndex
from query_api.latest.mirror import LiveMirror
from query_api.metrics import ApiMetrics
from telemetry_common.influx_query import InfluxError, InfluxQL

log = logging.getLogger(__name__)


async def confirm_mirror(
    index: ChargerIndex, mirror: LiveMirror, influx: InfluxQL, *, settle_s: float, mono: float
) -> tuple[int, int]:
    """Confirm every settled mirror entry that InfluxDB holds nothing newer for, with one query.

    An entry counts as settled, as in :func:`query_api.latest.trust.settled`, when it arrived more
    than ``settle_s`` before ``mono``; InfluxDB is asked after ``mono``, so a confirmed entry was
    the newest stored reading at ``mono`` at least. Returns (confirmed, behind): ``behind`` are
    entries InfluxDB holds something newer for (their next ``latest`` asks InfluxDB).
    """
    settled = mirror.settled(mono - settle_s)
    if not settled:
        return 0, 0
    stored = await index.load(influx, mono, fresh=True)
    confirmed = behind = 0
    for i, (charger_id, entry) in enumerate(settled, start=1):
        seen = stored.get(charger_id)
        if seen is None or seen.order <= entry.snapshot.order:
            entry.checked = max(entry.checked, mono)
            confirmed += 1
        else:
            behind += 1
        if i % SWEEP_SLICE == 0:
            await asyncio.sleep(0)  # requests go on between slices
    return confirmed, behind


async def confirm_forever(
    index: ChargerIndex,
    mirror: LiveMirror,
    influx: InfluxQL,
    *,
    settle_s: float,
    every_s: float,
    live: Callable[[], bool],
    metrics: ApiMetrics,
) -> None:
    """Run :func:`confirm_mirror` every ``every_s`` while the mirror is fed (a task of the API);
    the first sweep runs as soon as the first values have settled."""
    await asyncio.sleep(settle_s)
    while True:
        if live() and len(mirror):
            mono = time.monotonic()
            try:
                confirmed, behind = await confirm_mirror(
                    index, mirror, influx, settle_s=settle_s, mono=mono
                )
            except InfluxError as exc:
                metrics.sweeps.labels("failed").inc()
                log.warning("mirror sweep failed (latest asks InfluxDB per charger): %s", exc)
            else:
                metrics.sweeps.labels("ok").inc()
                metrics.sweep_seconds.set(time.monotonic() - mono)
                log.debug("mirror sweep: %d confirmed, %d behind InfluxDB", confirmed, behind)
        await asyncio.sleep(every_s)
