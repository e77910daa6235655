"""The charger side of OCPP tests: the ``ocpp`` library's own ChargePoint (a real peer, not our
code; 1.6 or 2.0.1) over a real WebSocket to a gateway's OCPP endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Literal, TypeVar, overload

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response
from websockets.typing import Subprotocol

from edge_agent.ocpp.lib import ChargePoint, ChargePoint201

OCPP16: Final = [Subprotocol("ocpp1.6")]
OCPP201: Final = [Subprotocol("ocpp2.0.1")]
CP = TypeVar("CP", bound=ChargePoint)
Version = Literal["1.6", "2.0.1"]


def basic_auth(username: str, password: str) -> list[tuple[str, str]]:
    """``additional_headers`` for HTTP Basic auth (OCPP security profiles 1 and 2)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return [("Authorization", f"Basic {token}")]


def _as_is(ws: Any) -> Any:
    return ws


@overload
def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    version: Version = "1.6",
    wrap: Callable[[Any], Any] = _as_is,
) -> contextlib.AbstractAsyncContextManager[ChargePoint]: ...


@overload
def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    version: Version = "1.6",
    cls: type[CP],
    wrap: Callable[[Any], Any] = _as_is,
) -> contextlib.AbstractAsyncContextManager[CP]: ...


def charge_point(
    port: int,
    charger_id: str,
    *,
    response_timeout: int = 20,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    version: Version = "1.6",
    cls: type[ChargePoint] | None = None,
    wrap: Callable[[Any], Any] = _as_is,
) -> contextlib.AbstractAsyncContextManager[ChargePoint]:
    """``charger_id`` connected to ``ws://127.0.0.1:{port}/ocpp/{charger_id}`` (``wss://`` with
    ``tls``; Basic auth with ``password``) speaking OCPP ``version`` (the library's ``ocpp.v16``
    or ``ocpp.v201`` ChargePoint), its receive loop running until the block ends. ``cls``: a
    ChargePoint subclass (with ``@on`` handlers for the CSMS's calls); ``wrap``: what the library
    gets as the connection (e.g. a recorder)."""
    if cls is None:
        cls = ChargePoint201 if version == "2.0.1" else ChargePoint
    return _charge_point(port, charger_id, response_timeout, password, tls, version, cls, wrap)


@contextlib.asynccontextmanager
async def _charge_point(
    port: int,
    charger_id: str,
    response_timeout: int,
    password: str | None,
    tls: ssl.SSLContext | None,
    version: Version,
    cls: type[ChargePoint],
    wrap: Callable[[Any], Any],
) -> AsyncIterator[ChargePoint]:
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ocpp/{charger_id}"
    headers = basic_auth(charger_id, password) if password is not None else None
    v201 = version == "2.0.1"
    protocols = OCPP201 if v201 else OCPP16
    async with connect(url, subprotocols=protocols, additional_headers=headers, ssl=tls) as ws:
        assert ws.subprotocol == ("ocpp2.0.1" if v201 else "ocpp1.6"), ws.subprotocol
        cp = cls(charger_id, wrap(ws), response_timeout=response_timeout)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def refusal(
    port: int,
    charger_id: str,
    *,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    version: Version = "1.6",
) -> Response:
    """The HTTP response that refused this charger's handshake (fails if it was accepted)."""
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ocpp/{charger_id}"
    headers = basic_auth(charger_id, password) if password is not None else None
    protocols = OCPP201 if version == "2.0.1" else OCPP16
    try:
        async with connect(url, subprotocols=protocols, additional_headers=headers, ssl=tls):
            pass
    except InvalidStatus as refused:
        return refused.response
    raise AssertionError(f"{charger_id}'s handshake was accepted")
