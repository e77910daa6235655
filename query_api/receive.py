"""Receive timeouts: a request's headers, and then its body, must arrive within a bounded time.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``), and any byte
received cancels that timer: a client sending its headers one byte a second (slowloris), or a
body that never completes, holds a connection (and, for a body, a running request) for as long
as it likes, and a few thousand of them take every file descriptor. This protocol (uvicorn's
httptools protocol, used by ``telemetry-api``) adds two deadlines:

- **header**: from the connection's start, or the first byte of a request on a kept-alive
  connection, until its headers are complete: ``HEADER_TIMEOUT_S``;
- **body**: from then until its body is complete: ``BODY_TIMEOUT_S`` (a request without a body
  completes with its headers).

(A deadline per connection, checked by one task per server, rather than a timer per request:
two timers armed and cancelled per request cost ~3 us under uvloop.)

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
    ``on_timeout(phase)`` is called for each connection cut.

    No timer per request: a request sets its connection's deadline (a float), and one task per
    server, while connections are open, closes those past theirs every ``tick`` (a tenth of
    the shorter timeout, between 50 ms and 1 s): a connection is cut at most a tick late."""
    tick = min(1.0, max(0.05, min(header_timeout_s, body_timeout_s) / 10))
    watched: set[ReceiveGuard] = set()
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        loop = asyncio.get_running_loop()
        while watched:
            await asyncio.sleep(tick)
            now = loop.time()
            for conn in [c for c in watched if c.deadline is not None and c.deadline <= now]:
                conn.expired()

    class ReceiveGuard(HttpToolsProtocol):
        #: When the headers (``phase`` header) or the body (body) must be in; None: not waiting.
        deadline: float | None = None
        phase: Phase = "header"

        def _arm(self, phase: Phase) -> None:
            delay = header_timeout_s if phase == "header" else body_timeout_s
            self.deadline, self.phase = self.loop.time() + delay, phase

        def expired(self) -> None:
            phase, self.deadline = self.phase, None
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
            watched.add(self)
            if not sweeper or sweeper[0].done():
                sweeper[:] = [self.loop.create_task(sweep(), name="receive-timeouts")]

        def connection_lost(self, exc: Exception | None) -> None:
            self.deadline = None
            watched.discard(self)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.deadline is None:  # the next request of a kept-alive connection
                self._arm("header")

        def on_headers_complete(self) -> None:
            self._arm("body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.deadline = None
            super().on_message_complete()

    return ReceiveGuard
