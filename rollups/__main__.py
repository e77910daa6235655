"""``telemetry-rollups``: retention of the raw readings and their 1-minute and 1-hour rollups."""

from __future__ import annotations

import asyncio
from datetime import datetime

from rollups.service import run_backfill, run_service
from rollups.settings import RollupsSettings
from telemetry_common.job_command import JobCommand


async def _serve(settings: RollupsSettings, stop: asyncio.Event, once: bool) -> bool:
    return await run_service(settings, stop, once=once)


async def _backfill(settings: RollupsSettings, start: datetime, end: datetime) -> str:
    result = await run_backfill(settings, start, end)
    return f"written: {result.written['1m']} 1-minute, {result.written['1h']} 1-hour points"


COMMAND = JobCommand(
    prog="telemetry-rollups",
    settings=RollupsSettings,
    description=(
        "Set the retention of the raw readings and write their 1-minute and 1-hour rollups "
        "(mean/min/max/last per field, count, last status) every INTERVAL_S. Configured by "
        "{prefix}* environment variables (docs/settings.md, docs/deploy.md)."
    ),
    backfill_help="recompute the rollups of a range (late readings older than LOOKBACK)",
    backfill_description=(
        "Recompute every complete 1-minute and 1-hour bucket touching [start, end)."
    ),
    serve=_serve,
    backfill=_backfill,
)


def main(argv: list[str] | None = None) -> None:
    COMMAND.main(argv)


if __name__ == "__main__":
    main()
