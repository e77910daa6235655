"""The CSMS side of OCPP proxy tests: the ``ocpp`` library's own ChargePoint (v16, or v201 for a
charger that speaks 2.0.1) in the central system role (``@on`` handlers behind
``websockets.serve``, the library's CSMS pattern), and a
connection wrapper that records every frame a peer sends and receives. A CSMS may require
credentials (:func:`requires_basic_auth`, :func:`csms_tls`), as an operator's does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from edge_agent.capture import Capture
from edge_agent.ocpp import CentralSystem, OcppSettings
from edge_agent.ocpp.lib import ChargePoint, ChargePoint201, call_result, call_result201, on
from tests.support.fixtures import TestPki
from tests.support.ocpp_peer import OCPP16, OCPP201

ProcessRequest = Callable[[ServerConnection, Request], Response | None]


def charger_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def requires_basic_auth(passwords: dict[str, str]) -> ProcessRequest:
    """A handshake check: HTTP Basic ``<charger id>:<its password>`` (the id is the URL's last
    segment), else 401 (OCPP security profiles 1/2 at the CSMS)."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        charger_id = charger_of(request.path)
        password = passwords.get(charger_id)
        token = base64.b64encode(f"{charger_id}:{password}".encode()).decode()
        if password is None or request.headers.get("Authorization") != f"Basic {token}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "no\n")
        return None

    return check


def csms_tls(pki: TestPki, *, client_certs: bool = False) -> ssl.SSLContext:
    """The CSMS's TLS (the dev PKI's server certificate); ``client_certs``: it requires a
    client certificate from the PKI's CA (security profile 3 at the CSMS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_file))
    ctx.load_cert_chain(pki.pki.server_cert, pki.pki.server_key)
    if client_certs:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Recorded:
    """A WebSocket connection whose frames (text) are recorded, in order, as parsed JSON."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent: list[Any] = []
        self.received: list[Any] = []
        #: The frames as strings, to check the relay changed no byte.
        self.raw_sent: list[str] = []
        self.raw_received: list[str] = []

    async def recv(self) -> str:
        frame = str(await self.ws.recv())
        self.received.append(orjson.loads(frame))
        self.raw_received.append(frame)
        return frame

    async def send(self, frame: str) -> None:
        self.sent.append(orjson.loads(frame))
        self.raw_sent.append(frame)
        await self.ws.send(frame)

    def calls_received(self) -> list[tuple[str, dict[str, Any]]]:
        return [(f[2], f[3]) for f in self.received if f[0] == 2]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class CsmsPeer(ChargePoint):
    """One charger's connection at the CSMS: accepts everything, numbers transactions from
    ``first_tid``."""

    def __init__(self, charger_id: str, connection: Recorded, ids: itertools.count[int]) -> None:
        super().__init__(charger_id, connection, response_timeout=10)
        self.recorded = connection
        self.ids = ids

    @on("BootNotification")
    async def boot(self, **_: Any) -> object:
        return call_result.BootNotification(current_time=_now(), interval=60, status="Accepted")

    @on("Heartbeat")
    async def heartbeat(self) -> object:
        return call_result.Heartbeat(current_time=_now())

    @on("StatusNotification")
    async def status(self, **_: Any) -> object:
        return call_result.StatusNotification()

    @on("MeterValues")
    async def meter_values(self, **_: Any) -> object:
        return call_result.MeterValues()

    @on("StartTransaction")
    async def start_transaction(self, **_: Any) -> object:
        return call_result.StartTransaction(
            transaction_id=next(self.ids), id_tag_info={"status": "Accepted"}
        )

    @on("StopTransaction")
    async def stop_transaction(self, **_: Any) -> object:
        return call_result.StopTransaction()


class CsmsPeer201(ChargePoint201):
    """One 2.0.1 charger's connection at the CSMS: accepts everything (transaction ids are the
    charger's in 2.0.1)."""

    def __init__(self, charger_id: str, connection: Recorded, ids: itertools.count[int]) -> None:
        super().__init__(charger_id, connection, response_timeout=10)
        self.recorded = connection

    @on("BootNotification")
    async def boot(self, **_: Any) -> object:
        return call_result201.BootNotification(current_time=_now(), interval=60, status="Accepted")

    @on("Heartbeat")
    async def heartbeat(self) -> object:
        return call_result201.Heartbeat(current_time=_now())

    @on("StatusNotification")
    async def status(self, **_: Any) -> object:
        return call_result201.StatusNotification()

    @on("MeterValues")
    async def meter_values(self, **_: Any) -> object:
        return call_result201.MeterValues()

    @on("TransactionEvent")
    async def transaction_event(self, id_token: Any = None, **_: Any) -> object:
        if id_token is None:
            return call_result201.TransactionEvent()
        return call_result201.TransactionEvent(id_token_info={"status": "Accepted"})


class Csms:
    """What a test's CSMS saw: per charger id, its peers (one per connection), in order."""

    def __init__(self, first_tid: int) -> None:
        self.ids = itertools.count(first_tid)
        self.peers: dict[str, list[CsmsPeer | CsmsPeer201]] = {}
        #: Every handshake attempt's charger id, accepted or not, in order.
        self.handshakes: list[str] = []
        #: Handshakes that came while a connection of the same charger was still open.
        self.overlaps: list[str] = []

    def frames(self, charger_id: str) -> Recorded:
        """Every connection's frames of ``charger_id``, joined in connection order."""
        joined = Recorded(None)
        for peer in self.peers.get(charger_id, []):
            joined.sent += peer.recorded.sent
            joined.received += peer.recorded.received
            joined.raw_sent += peer.recorded.raw_sent
            joined.raw_received += peer.recorded.raw_received
        return joined


@contextlib.asynccontextmanager
async def csms(
    port: int,
    *,
    first_tid: int = 1000,
    process_request: ProcessRequest | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Csms]:
    """A CSMS on ``ws://127.0.0.1:{port}/ocpp/<charger_id>`` (``wss://`` with ``tls``) until
    the block ends; ``process_request`` checks each handshake (after it is recorded)."""
    seen = Csms(first_tid)
    conns: dict[str, list[ServerConnection]] = {}

    def record(connection: ServerConnection, request: Request) -> Response | None:
        charger_id = charger_of(request.path)
        seen.handshakes.append(charger_id)
        if any(c.state is State.OPEN for c in conns.get(charger_id, [])):
            seen.overlaps.append(charger_id)
        conns.setdefault(charger_id, []).append(connection)
        return None if process_request is None else process_request(connection, request)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = charger_of(ws.request.path)
        cls = CsmsPeer201 if ws.subprotocol == OCPP201[0] else CsmsPeer
        peer = cls(charger_id, Recorded(ws), seen.ids)
        seen.peers.setdefault(charger_id, []).append(peer)
        with contextlib.suppress(ConnectionClosed):
            await peer.start()

    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=OCPP201 + OCPP16,
        process_request=record,
        ssl=tls,
    ):
        yield seen


class Collector:
    """Consumes a central system's captures (as the agent would store them), keeping them."""

    def __init__(self, cs: CentralSystem) -> None:
        self.captures: list[Capture] = []
        self._batches = cs.captures()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self._batches:
            self.captures.extend(batch)


@contextlib.asynccontextmanager
async def proxy_gateway(
    tmp_path: Path, csms_port: int | None, **settings: Any
) -> AsyncIterator[tuple[CentralSystem, Collector]]:
    """The gateway's ``CentralSystem`` in proxy mode towards the CSMS on ``csms_port`` (None:
    no ``upstream_url`` setting, e.g. it is in the chargers file), short retry delays;
    ``settings``: more ``OcppSettings``."""
    upstream = None if csms_port is None else f"ws://127.0.0.1:{csms_port}/ocpp/{{charger_id}}"
    config = OcppSettings.model_validate(
        {
            "port": 0,
            "state_path": tmp_path / "ocpp-state.json",
            "mode": "proxy",
            "upstream_url": upstream,
            "upstream_open_timeout_s": 2,
            "upstream_retry_max_s": 0.3,
            **settings,
        }
    )
    async with CentralSystem(config) as cs:
        got = Collector(cs)
        try:
            yield cs, got
        finally:
            got.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await got.task
