"""``telemetry-api``: the query API under uvicorn, configured from ``TELEMETRY_API_*``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from query_api.app import create_app
from query_api.settings import ApiSettings
from telemetry_common.errors import ConfigError
from telemetry_common.logs import configure_logging

GC_THRESHOLD = 20_000

EPILOG = """environment:
  TELEMETRY_API_KEYS             JSON role -> key, e.g. '{"read":"K1","ingest":"K2","admin":"K3"}'
                                 (required; the API refuses to start without keys)
  TELEMETRY_API_HOST, _PORT      where to listen (default 127.0.0.1:8000)
  TELEMETRY_API_INFLUX__URL      InfluxDB (default http://127.0.0.1:8086); __DATABASE (telemetry),
                                 __USERNAME/__PASSWORD (1.x) or __TOKEN (2.x/3.x v1-compat)
  TELEMETRY_API_HISTORY_MAX_RANGE, _HISTORY_MAX_POINTS   caps of history queries
  TELEMETRY_API_MQTT__HOST, __PORT, __CA_FILE, __CERT_FILE, __KEY_FILE
                                 the broker (certificate CN telemetry-api): live mirror for
                                 latest, HTTP ingest; unset: latest from InfluxDB, ingest 503
  TELEMETRY_API_INGEST_GATEWAY   gateway id of the ingest/admin keys (default http-ingest);
                                 _INGEST_KEYS JSON {"gateway": "key"}; _INGEST_SEQ_FILE
  TELEMETRY_API_BRIDGE_URLS      JSON list of bridge URLs for /v1/pipeline/status
  every variable, its type, default and meaning: docs/settings.md
  TELEMETRY_API_LOG_LEVEL, _LOG_FORMAT (auto|json|text), _ACCESS_LOG (default false)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="telemetry-api",
        description="Serve the charger-telemetry REST API (FastAPI under uvicorn).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="override TELEMETRY_API_HOST")
    parser.add_argument("--port", type=int, help="override TELEMETRY_API_PORT")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = ApiSettings(**overrides)
    except (ConfigError, ValidationError) as exc:
        print(f"telemetry-api: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    # httpx logs every InfluxDB request at INFO; /metrics (and the access log) count requests.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    # Every object made so far (FastAPI, pydantic, the routes: ~10^5) moves to a permanent
    # generation, and a request's garbage is collected less often: a full collection walked all
    # of them and paused every request for tens of milliseconds (bench/api_latency.py, p99.9).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        server_header=False,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
