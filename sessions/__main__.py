"""``telemetry-sessions``: charging sessions computed from the stored readings."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime

from pydantic import ValidationError

from sessions.service import run_backfill, run_service
from sessions.settings import SessionsSettings
from telemetry_common.errors import TelemetryError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors


def _time(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a timezone (e.g. 2026-01-01T00:00Z)")
    return ts.astimezone(UTC)


def parser() -> argparse.ArgumentParser:
    prefix = env_name(SessionsSettings, "interval_s").removesuffix("INTERVAL_S")
    p = argparse.ArgumentParser(
        prog="telemetry-sessions",
        description=(
            "Compute the charging sessions (one per charger and transaction) from the stored "
            "readings and write them to measurement sessions (retention policy keep) every "
            f"INTERVAL_S. Configured by {prefix}* environment variables (docs/settings.md, "
            "docs/deploy.md#sessions)."
        ),
    )
    p.add_argument("--once", action="store_true", help="run one pass and exit (1 if it failed)")
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser(
        "backfill",
        help="recompute the sessions of a range (readings older than LOOKBACK, a first start)",
        description="Recompute every session with a reading stamped in [start, end].",
    )
    b.add_argument("--start", type=_time, required=True, help="RFC 3339 with a timezone")
    b.add_argument("--end", type=_time, required=True, help="RFC 3339 with a timezone")
    return p


async def _serve(settings: SessionsSettings, once: bool) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_service(settings, stop, once=once)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = SessionsSettings()
    except ValidationError as exc:
        for line in settings_errors(SessionsSettings, exc):
            print(f"telemetry-sessions: {line}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "backfill":
            if args.start >= args.end:
                raise SystemExit("telemetry-sessions: --start must be before --end")
            result = asyncio.run(run_backfill(settings, args.start, args.end))
            written = ", ".join(f"{n} {state}" for state, n in result.written.items())
            print(f"computed: {result.computed} sessions; written: {written}")
            return
        ok = asyncio.run(_serve(settings, args.once))
    except KeyboardInterrupt:
        return
    except TelemetryError as exc:
        print(f"telemetry-sessions: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
