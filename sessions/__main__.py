"""``telemetry-sessions``: charging sessions computed from the stored readings."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sessions.service import run_backfill, run_service
from sessions.settings import SessionsSettings
from telemetry_common.job_command import JobCommand


async def _serve(settings: SessionsSettings, stop: asyncio.Event, once: bool) -> bool:
    return await run_service(settings, stop, once=once)


async def _backfill(settings: SessionsSettings, start: datetime, end: datetime) -> str:
    result = await run_backfill(settings, start, end)
    written = ", ".join(f"{n} {state}" for state, n in result.written.items())
    return f"computed: {result.computed} sessions; written: {written}"


COMMAND = JobCommand(
    prog="telemetry-sessions",
    settings=SessionsSettings,
    description=(
        "Compute the charging sessions (one per charger and transaction) from the stored "
        "readings and write them to measurement sessions (retention policy keep) every "
        "INTERVAL_S. Configured by {prefix}* environment variables (docs/settings.md, "
        "docs/deploy.md#sessions)."
    ),
    backfill_help="recompute the sessions of a range (readings older than LOOKBACK, a first start)",
    backfill_description="Recompute every session with a reading stamped in [start, end].",
    serve=_serve,
    backfill=_backfill,
)


def main(argv: list[str] | None = None) -> None:
    COMMAND.main(argv)


if __name__ == "__main__":
    main()
