"""``telemetry-api``: the query API under uvicorn, configured from ``TELEMETRY_API_*``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from query_api.app import create_app
from query_api.receive import guarded_protocol
from query_api.settings import ApiSettings
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging
from telemetry_common.settings import env_name, settings_errors

GC_THRESHOLD = 20_000


def _epilog() -> str:
    """The environment, by names derived from the settings model (the full table is generated
    in docs/settings.md)."""
    keys = env_name(ApiSettings, "keys")
    prefix = keys.removesuffix("KEYS")
    return (
        f"environment: {prefix}* variables; every one, with its type, default and meaning, is\n"
        "in docs/settings.md. Required:\n"
        f"  {keys}  JSON role -> key, e.g. "
        """'{"read":"K1","ingest":"K2","admin":"K3"}'\n"""
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="telemetry-api",
        description="Serve the charger-telemetry REST API (FastAPI under uvicorn).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help=f"override {env_name(ApiSettings, 'host')}")
    parser.add_argument("--port", type=int, help=f"override {env_name(ApiSettings, 'port')}")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = ApiSettings(**overrides)
    except ValidationError as exc:
        for line in settings_errors(ApiSettings, exc):
            print(f"telemetry-api: {line}", file=sys.stderr)
        raise SystemExit(2) from exc
    except ConfigError as exc:
        print(f"telemetry-api: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    # httpx logs every InfluxDB request at INFO; /metrics (and the access log) count requests.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"telemetry-api: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    # Every object made so far (FastAPI, pydantic, the routes: ~10^5) moves to a permanent
    # generation, and a request's garbage is collected less often: a full collection walked all
    # of them and paused every request for tens of milliseconds (bench/api_latency.py, p99.9).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    timeouts = app.state.metrics.receive_timeouts
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        # Headers and body must arrive in bounded time (slowloris; query_api.receive).
        http=guarded_protocol(
            settings.header_timeout_s,
            settings.body_timeout_s,
            lambda phase: timeouts.labels(phase).inc(),
        ),
        log_config=None,
        server_header=False,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
