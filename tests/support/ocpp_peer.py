"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code; 1.6 or 2.0.1) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final, Literal

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint, ChargePoint201

OCPP16: Final = [Subprotocol("ocpp1.6")]
OCPP201: Final = [Subprotocol("ocpp2.0.1")]


@contextlib.asynccontextmanager
async def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    version: Literal["1.6", "2.0.1"] = "1.6",
) -> AsyncIterator[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}`` speaking OCPP
    ``version`` (the library's ``ocpp.v16`` or ``ocpp.v201`` ChargePoint), its receive loop
    running until the block ends."""
    url = f"ws://127.0.0.1:{port}/ocpp/{charger_id}"
    v201 = version == "2.0.1"
    async with connect(url, subprotocols=OCPP201 if v201 else OCPP16) as ws:
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
