"""A TCP proxy on loopback that the system tests put between a gateway and the broker, to cut,
delay, throttle or reset the link on command.

It runs its own event loop in a daemon thread so that the test (synchronous) can switch modes
while traffic flows. Modes:

- ``pass``: forward both ways;
- ``blackhole``: keep connections open, forward nothing (a dead cellular link), refuse nothing;
- ``reset``: close every open connection with a TCP RST now (SO_LINGER 0); new ones still work;
- ``latency_s``: delay each chunk by this many seconds;
- ``bytes_per_s``: throttle each direction to this rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class LinkState:
    blackhole: bool = False
    latency_s: float = 0.0
    bytes_per_s: float = 0.0
    connections: int = 0
    forwarded: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.state = LinkState()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._open: asyncio.Event | None = None  # set while not blackholed (made on the loop)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -- control (test thread) -------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set(self, *, blackhole: bool | None = None, latency_s: float | None = None,
            bytes_per_s: float | None = None) -> None:  # fmt: skip
        def apply() -> None:
            if blackhole is not None:
                self.state.blackhole = blackhole
                assert self._open is not None
                if blackhole:
                    self._open.clear()
                else:
                    self._open.set()
            if latency_s is not None:
                self.state.latency_s = latency_s
            if bytes_per_s is not None:
                self.state.bytes_per_s = bytes_per_s

        self._loop.call_soon_threadsafe(apply)

    def reset_all(self) -> int:
        """RST every open connection; returns how many were reset."""
        return asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(10)

    # -- the proxy (its own loop) ------------------------------------------------------------
    async def _start(self) -> int:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()

    async def _reset_all(self) -> int:
        writers = list(self.state.writers)
        for w in writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self.state.writers.clear()
        return len(writers)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self._target)
        except OSError:
            c_writer.transport.abort()
            return
        self.state.connections += 1
        self.state.writers.update((c_writer, s_writer))
        pumps = [
            asyncio.create_task(self._pump(c_reader, s_writer)),
            asyncio.create_task(self._pump(s_reader, c_writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for t in pumps:
            t.cancel()
        for w in (c_writer, s_writer):
            self.state.writers.discard(w)
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(16384)
            if not data:
                return
            assert self._open is not None
            await self._open.wait()  # blackholed: hold the bytes; the link is dead, not closed
            if self.state.latency_s:
                await asyncio.sleep(self.state.latency_s)
            if self.state.bytes_per_s:
                await asyncio.sleep(len(data) / self.state.bytes_per_s)
            writer.write(data)
            await writer.drain()
            self.state.forwarded += len(data)
