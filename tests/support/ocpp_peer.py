"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Final

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint

OCPP16: Final = [Subprotocol("ocpp1.6")]


def basic_auth(username: str, password: str) -> list[tuple[str, str]]:
    """``additional_headers`` for HTTP Basic auth (OCPP security profiles 1 and 2)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return [("Authorization", f"Basic {token}")]


@contextlib.asynccontextmanager
async def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}`` (``wss://`` with
    ``tls``; Basic auth with ``password``), its receive loop running until the block ends."""
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ocpp/{charger_id}"
    headers = basic_auth(charger_id, password) if password is not None else None
    async with connect(url, subprotocols=OCPP16, additional_headers=headers, ssl=tls) as ws:
        cp = ChargePoint(charger_id, ws, response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
