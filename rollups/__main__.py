"""``telemetry-rollups``: retention of the raw readings and their 1-minute and 1-hour rollups."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime

from pydantic import ValidationError

from rollups.service import run_backfill, run_service
from rollups.settings import RollupsSettings
from telemetry_common.errors import TelemetryError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors


def _time(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a timezone (e.g. 2026-01-01T00:00Z)")
    return ts.astimezone(UTC)


def parser() -> argparse.ArgumentParser:
    prefix = env_name(RollupsSettings, "interval_s").removesuffix("INTERVAL_S")
    p = argparse.ArgumentParser(
        prog="telemetry-rollups",
        description=(
            "Set the retention of the raw readings and write their 1-minute and 1-hour rollups "
            "(mean/min/max/last per field, count, last status) every INTERVAL_S. Configured by "
            f"{prefix}* environment variables (docs/settings.md, docs/deploy.md)."
        ),
    )
    p.add_argument("--once", action="store_true", help="run one pass and exit (1 if it failed)")
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser(
        "backfill",
        help="recompute the rollups of a range (late readings older than LOOKBACK)",
        description="Recompute every complete 1-minute and 1-hour bucket touching [start, end).",
    )
    b.add_argument("--start", type=_time, required=True, help="RFC 3339 with a timezone")
    b.add_argument("--end", type=_time, required=True, help="RFC 3339 with a timezone")
    return p


async def _serve(settings: RollupsSettings, once: bool) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_service(settings, stop, once=once)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = RollupsSettings()
    except ValidationError as exc:
        for line in settings_errors(RollupsSettings, exc):
            print(f"telemetry-rollups: {line}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "backfill":
            if args.start >= args.end:
                raise SystemExit("telemetry-rollups: --start must be before --end")
            result = asyncio.run(run_backfill(settings, args.start, args.end))
            print(f"written: {result.written['1m']} 1-minute, {result.written['1h']} 1-hour points")
            return
        ok = asyncio.run(_serve(settings, args.once))
    except KeyboardInterrupt:
        return
    except TelemetryError as exc:
        print(f"telemetry-rollups: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
