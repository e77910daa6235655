"""What the periodic jobs (``telemetry-rollups``, ``telemetry-sessions``) share: their command
line (``--once``, ``backfill --start --end``), settings errors named by variable, SIGTERM and
SIGINT, and the loop of passes every ``INTERVAL_S`` with capped, jittered backoff after a
failed one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from telemetry_common.errors import TelemetryError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors

log = logging.getLogger(__name__)

#: The longest wait between two passes after failures.
MAX_BACKOFF_S: Final = 60.0


async def run_passes(
    one_pass: Callable[[], Awaitable[bool]], *, interval_s: float, stop: asyncio.Event, once: bool
) -> bool:
    """``one_pass()`` every ``interval_s`` until ``stop`` is set (a pass in progress then is
    cancelled; ``once``: one pass); after a failed
    pass (False) the next waits twice as long each time, up to ``MAX_BACKOFF_S``, jittered.
    True unless ``once`` and that pass failed."""
    failures = 0
    while not stop.is_set():
        passing = asyncio.ensure_future(one_pass())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({passing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not passing.done():
            # Stopped in the middle of a pass (it may wait minutes on a loaded InfluxDB): it is
            # cancelled at its next await; a pass only records its progress after its writes,
            # so the next start does the cancelled work again.
            passing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await passing
            log.info("stopped in the middle of a pass; the next start does it again")
            return True
        ok = passing.result()
        if once:
            return ok
        failures = 0 if ok else failures + 1
        wait = interval_s
        if failures:
            wait = min(MAX_BACKOFF_S, interval_s * 2 ** (failures - 1))
            wait *= random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not crypto)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
    return True


def _time(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a timezone (e.g. 2026-01-01T00:00Z)")
    return ts.astimezone(UTC)


@dataclass(frozen=True)
class JobCommand:
    """A job's command. ``settings`` is its pydantic-settings class (with ``interval_s``,
    ``log_level``, ``log_format``); ``description`` may name ``{prefix}``, the settings'
    environment prefix; ``serve(settings, stop, once)`` runs the service; ``backfill(settings,
    start, end)`` recomputes a range and returns the line to print."""

    prog: str
    settings: type[Any]
    description: str
    backfill_help: str
    backfill_description: str
    serve: Callable[[Any, asyncio.Event, bool], Awaitable[bool]]
    backfill: Callable[[Any, datetime, datetime], Coroutine[Any, Any, str]]

    def parser(self) -> argparse.ArgumentParser:
        prefix = env_name(self.settings, "interval_s").removesuffix("INTERVAL_S")
        p = argparse.ArgumentParser(
            prog=self.prog, description=self.description.format(prefix=prefix)
        )
        p.add_argument("--once", action="store_true", help="run one pass and exit (1 if it failed)")
        sub = p.add_subparsers(dest="command")
        b = sub.add_parser(
            "backfill", help=self.backfill_help, description=self.backfill_description
        )
        b.add_argument("--start", type=_time, required=True, help="RFC 3339 with a timezone")
        b.add_argument("--end", type=_time, required=True, help="RFC 3339 with a timezone")
        return p

    async def _serve(self, settings: Any, once: bool) -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await self.serve(settings, stop, once)

    def main(self, argv: list[str] | None = None) -> None:
        args = self.parser().parse_args(argv)
        try:
            settings = self.settings()
        except ValidationError as exc:
            for line in settings_errors(self.settings, exc):
                print(f"{self.prog}: {line}", file=sys.stderr)
            raise SystemExit(2) from exc
        configure_logging(settings.log_level, settings.log_format)
        try:
            if args.command == "backfill":
                if args.start >= args.end:
                    raise SystemExit(f"{self.prog}: --start must be before --end")
                print(asyncio.run(self.backfill(settings, args.start, args.end)))
                return
            ok = asyncio.run(self._serve(settings, args.once))
        except KeyboardInterrupt:
            return
        except TelemetryError as exc:
            print(f"{self.prog}: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        if not ok:
            raise SystemExit(1)
