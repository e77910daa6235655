"""``telemetry-bridge``: the bridge and the processor in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys

from pydantic import ValidationError

from bridge.runner import run_bridge
from bridge.settings import BridgeSettings
from telemetry_common.errors import TelemetryError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors

GC_THRESHOLD = 50_000


async def _main(settings: BridgeSettings) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        # First signal: finish and acknowledge the batch in hand, then exit. Second signal, or
        # the shutdown timeout: exit now (unacknowledged messages are redelivered).
        if stop.is_set():
            task.cancel()
            return
        stop.set()
        loop.call_later(settings.shutdown_timeout_s, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        await run_bridge(settings, stop)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="telemetry-bridge",
        description=(
            "Consume gateway readings from Mosquitto (shared subscription, persistent session), "
            "validate them, write them to InfluxDB, and acknowledge only what is stored. "
            f"Configured by {env_name(BridgeSettings, 'client_id').removesuffix('CLIENT_ID')}* "
            "environment variables (docs/settings.md)."
        ),
    ).parse_args(argv)
    try:
        settings = BridgeSettings()
    except ValidationError as exc:
        for line in settings_errors(BridgeSettings, exc):
            print(f"telemetry-bridge: {line}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    # A batch allocates hundreds of thousands of short-lived, acyclic objects (freed by
    # reference counting); the default threshold (700) ran a collection every few readings and
    # cost ~20% of the processor's CPU. Cycles are still collected, just less often.
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    try:
        asyncio.run(_main(settings))
    except KeyboardInterrupt:
        pass
    except TelemetryError as exc:
        print(f"telemetry-bridge: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
