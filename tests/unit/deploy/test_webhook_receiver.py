"""The example Alertmanager webhook receiver (docker/alertmanager/webhook_receiver.py), served on
loopback in this process: it logs one line per alert of a webhook payload, forwards the
notification when asked, answers /healthz, and refuses what is not a notification."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest

from tests.support.compose_file import ROOT

SCRIPT = ROOT / "docker" / "alertmanager" / "webhook_receiver.py"

PAYLOAD = {
    "version": "4",
    "status": "firing",
    "receiver": "webhook",
    "groupLabels": {"alertname": "TelemetryEdgeBacklog"},
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "TelemetryEdgeBacklog",
                "severity": "warning",
                "kind": "edge_backlog",
                "gateway": "gw-1",
            },
            "annotations": {"summary": "Gateway gw-1: backlog", "runbook": "Check the link."},
            "startsAt": "2026-12-05T18:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "TelemetryServiceDown", "severity": "critical"},
            "annotations": {},
            "startsAt": "2026-12-05T17:00:00Z",
            "endsAt": "2026-12-05T17:30:00Z",
        },
    ],
}


@pytest.fixture(scope="module")
def receiver_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_receiver", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Served:
    def __init__(self, module: ModuleType, log_file: Path, forward: str | None) -> None:
        handler = module.make_handler(module.Receiver(log_file, forward))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.log_file = log_file
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def lines(self) -> list[dict[str, object]]:
        if not self.log_file.exists():
            return []
        return [orjson.loads(x) for x in self.log_file.read_bytes().splitlines()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def served(receiver_module: ModuleType, tmp_path: Path) -> Iterator[tuple[Served, Served]]:
    """A receiver that forwards to a second one."""
    target = Served(receiver_module, tmp_path / "forwarded.jsonl", None)
    first = Served(receiver_module, tmp_path / "alerts.jsonl", f"{target.url}/alerts")
    yield first, target
    first.close()
    target.close()


def test_each_alert_is_logged_and_the_notification_forwarded(
    served: tuple[Served, Served],
) -> None:
    """Two alerts in one notification: two log lines with status, name, severity, kind, summary,
    runbook and labels; the forward target logs the same two."""
    first, target = served
    r = httpx.post(f"{first.url}/alerts", content=orjson.dumps(PAYLOAD), timeout=10)
    assert r.status_code == 200
    lines = first.lines()
    assert [(x["status"], x["alertname"], x["severity"]) for x in lines] == [
        ("firing", "TelemetryEdgeBacklog", "warning"),
        ("resolved", "TelemetryServiceDown", "critical"),
    ]
    assert lines[0]["kind"] == "edge_backlog"
    assert lines[0]["summary"] == "Gateway gw-1: backlog"
    assert lines[0]["runbook"] == "Check the link."
    assert lines[0]["labels"] == PAYLOAD["alerts"][0]["labels"]  # type: ignore[index]
    assert lines[1]["ends_at"] == "2026-12-05T17:30:00Z"
    assert [x["alertname"] for x in target.lines()] == [x["alertname"] for x in lines]


def test_health_and_refusals(served: tuple[Served, Served]) -> None:
    """/healthz answers 200; not JSON: 400 and nothing logged; no body: 400; over 1 MiB: 413;
    another path: 404."""
    first, _ = served
    assert httpx.get(f"{first.url}/healthz", timeout=10).status_code == 200
    assert httpx.post(f"{first.url}/alerts", content=b"not json", timeout=10).status_code == 400
    assert httpx.post(f"{first.url}/alerts", content=b"", timeout=10).status_code == 400
    # Refused on its Content-Length, before the body is read (sent by hand: no body follows).
    host, port = first.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=10) as sock:
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.0 413")
    assert httpx.post(f"{first.url}/other", content=b"{}", timeout=10).status_code == 404
    assert first.lines() == []
