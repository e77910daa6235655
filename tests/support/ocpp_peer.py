"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code; 1.6 or 2.0.1) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Final, Literal

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint, ChargePoint201

OCPP16: Final = [Subprotocol("ocpp1.6")]
OCPP201: Final = [Subprotocol("ocpp2.0.1")]


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
    version: Literal["1.6", "2.0.1"] = "1.6",
) -> AsyncIterator[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}`` (``wss://`` with
    ``tls``; Basic auth with ``password``) speaking OCPP ``version`` (the library's ``ocpp.v16``
    or ``ocpp.v201`` ChargePoint), its receive loop running until the block ends."""
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ocpp/{charger_id}"
    headers = basic_auth(charger_id, password) if password is not None else None
    v201 = version == "2.0.1"
    protocols = OCPP201 if v201 else OCPP16
    async with connect(url, subprotocols=protocols, additional_headers=headers, ssl=tls) as ws:
        assert ws.subprotocol == ("ocpp2.0.1" if v201 else "ocpp1.6"), ws.subprotocol
        kind = ChargePoint201 if v201 else ChargePoint
        cp = kind(charger_id, ws, response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
