"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar, overload

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint

OCPP16: Final = [Subprotocol("ocpp1.6")]
CP = TypeVar("CP", bound=ChargePoint)


def _as_is(ws: Any) -> Any:
    return ws


@overload
def charge_point(
    port: int, charger_id: str, *, response_timeout: int = 20, wrap: Callable[[Any], Any] = _as_is
) -> contextlib.AbstractAsyncContextManager[ChargePoint]: ...


@overload
def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    cls: type[CP],
    wrap: Callable[[Any], Any] = _as_is,
) -> contextlib.AbstractAsyncContextManager[CP]: ...


def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    cls: type[ChargePoint] = ChargePoint,
    wrap: Callable[[Any], Any] = _as_is,
) -> contextlib.AbstractAsyncContextManager[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}``, its receive
    loop running until the block ends. ``cls``: a ChargePoint subclass (with ``@on`` handlers
    for the CSMS's calls); ``wrap``: what the library gets as the connection (e.g. a recorder)."""
    return _charge_point(port, charger_id, response_timeout, cls, wrap)


@contextlib.asynccontextmanager
async def _charge_point(
    port: int,
    charger_id: str,
    response_timeout: int,
    cls: type[ChargePoint],
    wrap: Callable[[Any], Any],
) -> AsyncIterator[ChargePoint]:
    url = f"ws://127.0.0.1:{port}/ocpp/{charger_id}"
    async with connect(url, subprotocols=OCPP16) as ws:
        cp = cls(charger_id, wrap(ws), response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
