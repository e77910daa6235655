"""The CSMS side of OCPP proxy tests: the ``ocpp`` library's own v16 ChargePoint in the central
system role (``@on`` handlers behind ``websockets.serve``, the library's CSMS pattern), and a
connection wrapper that records every frame a peer sends and receives."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from edge_agent.ocpp.lib import ChargePoint, call_result, on
from tests.support.ocpp_peer import OCPP16


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


class Csms:
    """What a test's CSMS saw: per charger id, its peers (one per connection), in order."""

    def __init__(self, first_tid: int) -> None:
        self.ids = itertools.count(first_tid)
        self.peers: dict[str, list[CsmsPeer]] = {}

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
async def csms(port: int, *, first_tid: int = 1000) -> AsyncIterator[Csms]:
    """A CSMS on ``ws://127.0.0.1:{port}/ocpp/<charger_id>`` until the block ends."""
    seen = Csms(first_tid)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        peer = CsmsPeer(charger_id, Recorded(ws), seen.ids)
        seen.peers.setdefault(charger_id, []).append(peer)
        with contextlib.suppress(ConnectionClosed):
            await peer.start()

    async with serve(handler, "127.0.0.1", port, subprotocols=OCPP16):
        yield seen
