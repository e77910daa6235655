"""Receive timeouts: a request's headers, and then its body, must arrive within a bounded time.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``), and any byte
received cancels that timer: a client sending its headers one byte a second (slowloris), or a
body that never completes, holds a connection (and, for a body, a running request) for as long
as it likes, and a few thousand of them take every file descriptor. This protocol (uvicorn's
httptools protocol, used by ``telemetry-api``) adds two timers:

- **header**: from the connection's start, or the first byte of a request on a kept-alive
  connection, until its headers are complete: ``HEADER_TIMEOUT_S``;
- **body**: from then until its body is complete: ``BODY_TIMEOUT_S`` (a request without a body
  completes with its headers).

When one runs out the client gets ``408 Request Timeout`` (unless a response started) and the
connection is closed; a request already running sees the client gone (``http.disconnect``).
Each is counted (``telemetry_api_receive_timeouts_total{phase}``). The time a response takes,
and a slow reader of a response, are not bounded here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

Phase = Literal["header", "body"]

_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\n"
    b"connection: close\r\n\r\n"
    b"request timeout\n"
)


def guarded_protocol(
    header_timeout_s: float,
    body_timeout_s: float,
    on_timeout: Callable[[Phase], None] | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two receive timeouts (pass it as ``http=``);
    ``on_timeout(phase)`` is called for each connection cut."""

    class ReceiveGuard(HttpToolsProtocol):
        _receive_timer: asyncio.TimerHandle | None = None

        def _arm(self, phase: Phase) -> None:
            self._disarm()
            delay = header_timeout_s if phase == "header" else body_timeout_s
            self._receive_timer = self.loop.call_later(delay, self._expired, phase)

        def _disarm(self) -> None:
            if self._receive_timer is not None:
                self._receive_timer.cancel()
                self._receive_timer = None

        def _expired(self, phase: Phase) -> None:
            self._receive_timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            # A 408 only where no other response may be under way (pipelined requests).
            if phase == "header":
                answer = cycle is None or cycle.response_complete
            else:
                answer = not self.pipeline and not cycle.response_started
            if answer:
                self.transport.write(_TIMEOUT_RESPONSE)
            if cycle is not None:
                cycle.keep_alive = False
            self.transport.close()
            log.debug("%s: request %s not received in time; closed", self.client, phase)
            if on_timeout is not None:
                on_timeout(phase)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm("header")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._receive_timer is None:  # the next request of a kept-alive connection
                self._arm("header")

        def on_headers_complete(self) -> None:
            self._arm("body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return ReceiveGuard
