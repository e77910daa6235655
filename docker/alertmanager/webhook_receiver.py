"""An Alertmanager webhook receiver, as an example to adapt: it logs every alert it is sent and
can forward each notification to another URL (a chat or paging webhook).

    python docker/alertmanager/webhook_receiver.py --port 9096 [--log-file alerts.jsonl]
        [--forward https://chat.example/hook]

Alertmanager (docker/alertmanager/alertmanager.yml) POSTs its webhook payload (version 4:
``{"status", "receiver", "groupLabels", "alerts": [{"status", "labels", "annotations",
"startsAt", "endsAt", ...}], ...}``) to ``/alerts``. Each alert becomes one JSON line on stdout
(and in ``--log-file``): ``{"received_at", "status", "alertname", "severity", "kind", "summary",
"runbook", "labels", "starts_at", "ends_at"}``. ``GET /healthz`` answers 200. Standard library
only, so it runs in any Python 3.11 image; the compose stack runs it as ``alert-webhook``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 1024 * 1024
log = logging.getLogger("alert-webhook")


def alert_lines(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per alert of an Alertmanager webhook payload."""
    now = datetime.now(UTC).isoformat()
    out = []
    for alert in payload.get("alerts", []):
        labels = alert.get("labels", {})
        notes = alert.get("annotations", {})
        out.append(
            {
                "received_at": now,
                "status": alert.get("status", payload.get("status")),
                "alertname": labels.get("alertname"),
                "severity": labels.get("severity"),
                "kind": labels.get("kind"),
                "summary": notes.get("summary"),
                "runbook": notes.get("runbook"),
                "labels": labels,
                "starts_at": alert.get("startsAt"),
                "ends_at": alert.get("endsAt"),
            }
        )
    return out


class Receiver:
    """Where the alerts go: stdout, an optional JSON-lines file, an optional forward URL."""

    def __init__(self, log_file: Path | None, forward: str | None) -> None:
        self._log_file = log_file
        self._forward = forward
        self._lock = threading.Lock()

    def handle(self, body: bytes) -> None:
        payload = json.loads(body)
        lines = [json.dumps(rec, sort_keys=True) for rec in alert_lines(payload)]
        with self._lock:
            for text in lines:
                print(text, flush=True)
            if self._log_file is not None:
                with self._log_file.open("a", encoding="utf-8") as f:
                    f.writelines(text + "\n" for text in lines)
        if self._forward:
            req = urllib.request.Request(  # noqa: S310 - the operator's own URL
                self._forward, body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10):  # noqa: S310
                    pass
            except OSError as exc:
                log.warning("could not forward to %s: %s", self._forward, exc)


def make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200 if self.path == "/healthz" else 404)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/alerts":
                self._answer(404)
                return
            if not 0 < length <= MAX_BODY:
                self._answer(413 if length else 400)
                return
            try:
                receiver.handle(self.rfile.read(length))
            except (ValueError, AttributeError):
                self._answer(400)
                return
            self._answer(200)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Log (and forward) Alertmanager notifications.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9096, help="port to listen on")
    parser.add_argument("--log-file", type=Path, help="also append each alert here (JSON lines)")
    parser.add_argument("--forward", help="POST every notification on to this URL as well")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    receiver = Receiver(args.log_file, args.forward)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(receiver))
    log.info("alert webhook on http://%s:%d/alerts", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
