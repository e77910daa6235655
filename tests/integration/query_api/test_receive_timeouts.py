"""Receive timeouts against a real ``telemetry-api`` process, over real sockets: a client that
trickles its headers (slowloris), or whose body stalls, gets 408 and is disconnected once
HEADER_TIMEOUT_S / BODY_TIMEOUT_S ran out, while other clients are served meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from query_api.settings import ApiSettings
from telemetry_common.settings import env_for
from tests.support.fixtures import InfluxTarget
from tests.support.processes import Procs, start_api

pytestmark = pytest.mark.integration

READ = "r" * 32
ADMIN = "a" * 32
TIMEOUT_S = 1.0
#: Far beyond the timeout: the connection must be cut well before the trickle would end.
BOUND_S = 10.0
#: The slow client sends one byte this often (it never stops on its own before BOUND_S).
TRICKLE_S = 0.2


@pytest.fixture
def api(influx_db: InfluxTarget, tmp_path: Path) -> Iterator[str]:
    procs = Procs(tmp_path)
    try:
        yield start_api(
            procs,
            influx_db,
            READ,
            keys={"admin": ADMIN},
            extra_env=env_for(ApiSettings, header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S),
        )
    finally:
        procs.stop_all()


@dataclass
class Trickle:
    """A client that sends ``head`` at once, then ``rest`` one byte every TRICKLE_S, and
    records what the server answered and when it closed the connection."""

    address: tuple[str, int]
    head: bytes
    rest: bytes
    answer: bytearray = field(default_factory=bytearray)
    closed_after_s: float | None = None
    sent: int = 0

    def run(self) -> None:
        with socket.create_connection(self.address, timeout=BOUND_S) as sock:
            started = time.monotonic()
            sock.sendall(self.head)
            sock.setblocking(False)
            for byte in self.rest:
                if self._closed(sock) or time.monotonic() - started > BOUND_S:
                    break
                try:
                    sock.send(bytes([byte]))
                    self.sent += 1
                except OSError:
                    break
                time.sleep(TRICKLE_S)
            sock.setblocking(True)
            sock.settimeout(max(0.1, BOUND_S - (time.monotonic() - started)))
            try:
                while chunk := sock.recv(4096):
                    self.answer += chunk
            except TimeoutError:
                return  # never closed
            except OSError:
                pass  # reset: closed as well
            self.closed_after_s = time.monotonic() - started

    def _closed(self, sock: socket.socket) -> bool:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self.answer += chunk
        return not chunk


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _served_meanwhile(api: str, slow: threading.Thread) -> int:
    """Requests a normal client got answered (200) while ``slow`` runs."""
    served = 0
    with httpx.Client(base_url=api, timeout=5) as client:
        while slow.is_alive():
            resp = client.get("/v1/chargers", headers={"X-API-Key": READ})
            assert resp.status_code == 200, resp.text
            served += 1
            time.sleep(0.1)
    return served


def _check(trickle: Trickle, api: str) -> None:
    thread = threading.Thread(target=trickle.run)
    thread.start()
    served = _served_meanwhile(api, thread)
    thread.join()
    assert trickle.closed_after_s is not None, "the slow client was never disconnected"
    assert TIMEOUT_S <= trickle.closed_after_s < BOUND_S, trickle.closed_after_s
    assert not trickle.rest or trickle.sent < len(trickle.rest), "cut before it sent all"
    assert bytes(trickle.answer).startswith(b"HTTP/1.1 408 "), bytes(trickle.answer)
    assert served >= 3, served


def test_headers_trickled_one_byte_at_a_time_are_cut(api: str) -> None:
    """Slowloris: the request line at once, then a header byte every 0.2 s (each byte used to
    keep the connection open for good)."""
    headers = b"Host: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 20) for i in range(20))
    _check(Trickle(_address(api), b"GET /healthz HTTP/1.1\r\n", headers + b"\r\n"), api)


def test_a_body_that_stalls_is_cut(api: str) -> None:
    """Complete headers announcing 200 bytes of JSON, then a byte every 0.2 s: the request (the
    route is waiting for its body) is cut at BODY_TIMEOUT_S."""
    body = b'{"gateway_id": "gw-1"' + b" " * 178 + b"}"
    head = (
        b"PUT /v1/bindings/cp-1 HTTP/1.1\r\nHost: x\r\n"
        b"X-API-Key: " + ADMIN.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    _check(Trickle(_address(api), head, body), api)


def test_a_connection_that_sends_nothing_is_cut(api: str) -> None:
    _check(Trickle(_address(api), b"", b""), api)
