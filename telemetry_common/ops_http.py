"""A service's operational endpoints on a minimal HTTP/1.1 server (GET only, no body).

The bridge and the rollup job have no API of their own, so a web framework would be all weight:
this serves routes such as ``/metrics`` and ``/healthz`` on the asyncio loop they already run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

#: A route answers (status, content type, body).
Handler = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(
    host: str, port: int, routes: Mapping[str, Handler], *, name: str = "bridge"
) -> asyncio.Server:
    """Serve ``routes`` on ``host:port`` until the returned server is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method != "GET":
                status, ctype, body = 405, "text/plain", b"GET only\n"
            elif path in routes:
                status, ctype, body = routes[path]()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    log.info("%s HTTP endpoints on http://%s:%d (%s)", name, host, port, " ".join(routes))
    return server
