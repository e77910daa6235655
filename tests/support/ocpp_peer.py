"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint

OCPP16: Final = [Subprotocol("ocpp1.6")]


@contextlib.asynccontextmanager
async def charge_point(
    port: int, charger_id: str, *, response_timeout: int = 20
) -> AsyncIterator[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}``, its receive
    loop running until the block ends."""
    url = f"ws://127.0.0.1:{port}/ocpp/{charger_id}"
    async with connect(url, subprotocols=OCPP16) as ws:
        cp = ChargePoint(charger_id, ws, response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
