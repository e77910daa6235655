"""Proxy mode: one charger's relay between its WebSocket and the operator's CSMS.

Every text frame is forwarded as the same string, in order, both ways, CSMS-initiated calls
included; the relay knows no OCPP version. Only two things look inside the frames:

- the :class:`~edge_agent.ocpp.tap.FrameTap`: a CALL from the charger is forwarded only after
  its captures are stored (``emit`` returned), and the CALLRESULT to it (StartTransaction.conf's
  ``transactionId``) goes to the charger only after its captures are stored;
- the offline rules (:mod:`edge_agent.ocpp.offline`): while the CSMS is unreachable the relay
  answers the charger itself, queues the transaction messages on disk, and replays them (in
  order, before any new frame of that charger) when the CSMS is back. A transaction the gateway
  started has the gateway's id at the charger and the CSMS's upstream: ``transactionId`` is
  rewritten in the frames that name one (the only frames that do not pass unchanged).

The upstream connection is opened at the charger's handshake (:func:`open_upstream`, by the
server) so that the subprotocol the CSMS picks is the one the charger gets; when it cannot be
opened, or drops later, the relay keeps trying with capped exponential backoff and full jitter.
Frames are never logged (they can hold id tags): only actions and message ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from edge_agent.capture import Capture
from edge_agent.ocpp.chargers import ChargersConfig
from edge_agent.ocpp.frames import (
    CALL,
    CALLERROR,
    CALLRESULT,
    FrameError,
    call_error_json,
    error_code_16,
    error_code_201,
    parse_frame,
)
from edge_agent.ocpp.lib import InternalError, OCPPError
from edge_agent.ocpp.offline import OfflineStore, QueueFull, is_queued, offline_answer
from edge_agent.ocpp.session import Shared
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.tap import tap_for
from edge_agent.ocpp.v201.session import keep_location
from edge_agent.ocpp.v201.tap import Tap201
from telemetry_common.errors import ConfigError

log = logging.getLogger(__name__)

#: Subprotocols the gateway can speak with a charger while the CSMS is unreachable.
OFFLINE_SUBPROTOCOLS: Final = (Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6"))
#: Charger CALLs awaiting the CSMS's answer, per charger; the oldest are forgotten beyond it.
MAX_IN_FLIGHT: Final = 1_000
FIRST_RETRY_S: Final = 0.5


class NoUpstream(LookupError):
    """No CSMS URL is known for this charger (neither the chargers file nor the settings)."""


def upstream_url(settings: OcppSettings, chargers: ChargersConfig, charger_id: str) -> str:
    """The CSMS URL for ``charger_id``: the chargers file's (the charger's own, else its
    ``[defaults]``), else ``OcppSettings.upstream_url``; :class:`NoUpstream` without either."""
    url = chargers.upstream_url(charger_id) or settings.upstream_url_for(charger_id)
    if url is None:
        raise NoUpstream(charger_id)
    return url


async def open_upstream(
    settings: OcppSettings,
    chargers: ChargersConfig,
    charger_id: str,
    subprotocols: list[Subprotocol],
) -> ClientConnection:
    """Connect to the CSMS for ``charger_id`` offering ``subprotocols``, with the charger's
    credentials towards it (Basic auth, TLS trust, client certificate: the chargers file).
    Raises :class:`NoUpstream`, :class:`ConfigError` (a certificate file that does not load)
    and what ``websockets.connect`` raises (OSError, TimeoutError, InvalidHandshake)."""
    url = upstream_url(settings, chargers, charger_id)
    return await connect(
        url,
        subprotocols=subprotocols,
        open_timeout=settings.upstream_open_timeout_s,
        max_size=settings.max_message_bytes,
        close_timeout=2,
        logger=logging.getLogger("websockets.client.ocpp"),
        **chargers.upstream_connect_kwargs(charger_id, url),
    )


#: Opens this charger's CSMS connection offering these subprotocols (the server binds
#: :func:`open_upstream` to the charger and the chargers file in force at each attempt).
ConnectUpstream = Callable[[list[Subprotocol]], Awaitable[ClientConnection]]


def _map_tid(payload: dict[str, Any], tid_map: Any) -> dict[str, Any] | None:
    """``payload`` with ``transactionId`` (top level, or in ``csChargingProfiles``) replaced
    by ``tid_map(tid)``; None when nothing changes (the frame then goes as it came)."""
    changed = None
    tid = payload.get("transactionId")
    if isinstance(tid, int) and (new := tid_map(tid)) not in (None, tid):
        changed = {**payload, "transactionId": new}
    profile = payload.get("csChargingProfiles")
    if isinstance(profile, dict):
        tid = profile.get("transactionId")
        if isinstance(tid, int) and (new := tid_map(tid)) not in (None, tid):
            changed = {
                **(changed or payload),
                "csChargingProfiles": {**profile, "transactionId": new},
            }
    return changed


class Relay:
    """``await Relay(...).run()`` relays until the charger disconnects."""

    def __init__(
        self,
        charger_id: str,
        charger: ServerConnection,
        upstream: ClientConnection | None,
        shared: Shared,
        store: OfflineStore,
        connect_upstream: ConnectUpstream,
    ) -> None:
        self.charger_id = charger_id
        self._charger = charger
        self._first_upstream = upstream
        self._connect_upstream = connect_upstream
        self._s = shared
        self._store = store
        self.subprotocol = charger.subprotocol
        self._tap = tap_for(self.subprotocol, charger_id, shared, connector_of=store.connector_of)
        #: CALLERROR codes as the charger's version spells them.
        self._spell = error_code_201 if self.subprotocol == "ocpp2.0.1" else error_code_16
        #: The CSMS connection, once its queue is replayed; None while the CSMS is unreachable.
        self._up: ClientConnection | None = None
        #: The CSMS connection while the queue is replayed (the charger's answers may go).
        self._replaying: ClientConnection | None = None
        #: Held while a charger CALL is forwarded or queued, and during a replay: keeps order.
        self._turn = asyncio.Lock()
        self._replay_lock = store.replay_lock(charger_id)
        self._in_flight: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        #: Set once the CSMS connection of the handshake is relaying (its queue replayed) or
        #: lost: the charger's first frames wait for it, so they are not taken as offline.
        self._settled = asyncio.Event()
        if upstream is None:
            self._settled.set()

    async def run(self) -> None:
        upstream = asyncio.create_task(self._upstream_loop(), name=f"ocpp-up-{self.charger_id}")
        try:
            await self._settled.wait()
            async for raw in self._charger:
                if isinstance(raw, bytes):
                    log.warning("ocpp %s: binary frame dropped (OCPP-J is text)", self.charger_id)
                    continue
                await self._from_charger(raw)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
            if self._up is not None:
                await self._up.close()

    # -- charger -> CSMS ------------------------------------------------------------------------

    async def _from_charger(self, raw: str) -> None:
        try:
            msg: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        well_formed = (isinstance(msg, list) and len(msg) >= 3 and isinstance(msg[1], str)) and msg[
            0
        ] in (CALL, CALLRESULT, CALLERROR)
        if well_formed and msg[0] != CALL:  # the charger's answer to a CSMS call
            if not await self._send_up(raw, self._replaying):
                log.info("ocpp %s: answer %s dropped: CSMS unreachable", self.charger_id, msg[1])
            return
        call_ok = well_formed and len(msg) == 4 and isinstance(msg[2], str)
        if not call_ok or not isinstance(msg[3], dict):
            async with self._turn:  # the CSMS judges a malformed frame; else the gateway does
                if not await self._send_up(raw):
                    await self._answer_bad_frame(raw)
            return
        unique_id, action, payload = msg[1], msg[2], msg[3]
        self._s.counters.requests += 1
        try:
            await self._emit(self._tap.on_call(unique_id, action, payload))
            if isinstance(self._tap, Tap201) and self._tap.event is not None:
                await keep_location(self._s, self.charger_id, self._tap.event)
        except OCPPError as error:  # the agent stopped before storing: the charger resends
            await self._refuse(unique_id, error)
            return
        async with self._turn:
            mapped = _map_tid(payload, lambda t: self._store.csms_tid(self.charger_id, t))
            out = (
                raw if mapped is None else orjson.dumps([CALL, unique_id, action, mapped]).decode()
            )
            self._in_flight[unique_id] = (action, payload)
            while len(self._in_flight) > MAX_IN_FLIGHT:
                self._in_flight.popitem(last=False)
            if await self._send_up(out):
                return
            self._in_flight.pop(unique_id, None)
            await self._offline_call(unique_id, action, payload)

    async def _send_up(self, frame: str, replaying: ClientConnection | None = None) -> bool:
        up = self._up or replaying
        if up is None:
            return False
        try:
            await up.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def _offline_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> None:
        if is_queued(action, payload, self.subprotocol):
            connector = payload.get("connectorId") if action == "StartTransaction" else None
            try:
                gateway_tid = await asyncio.to_thread(
                    self._store.enqueue,
                    self.charger_id,
                    unique_id,
                    action,
                    payload,
                    connector=connector if isinstance(connector, int) else None,
                    limit=self._s.settings.offline_max_queued,
                )
            except QueueFull as exc:
                log.warning(
                    "ocpp %s: CSMS unreachable and the offline queue is full (%s, "
                    "OFFLINE_MAX_QUEUED): %s refused (InternalError); the charger keeps it",
                    self.charger_id,
                    exc,
                    action,
                )
                await self._refuse(
                    unique_id,
                    InternalError("offline queue full", {"cause": "the CSMS is unreachable"}),
                )
                return
            result = offline_answer(action, payload, gateway_tid)
            if action == "StartTransaction":
                log.info(
                    "ocpp %s: CSMS unreachable: transaction %s started by the gateway",
                    self.charger_id,
                    gateway_tid,
                )
                await self._emit(self._tap.on_result(unique_id, action, payload, result))
            else:
                log.info("ocpp %s: CSMS unreachable: %s queued", self.charger_id, action)
            await self._charger.send(orjson.dumps([CALLRESULT, unique_id, result]).decode())
            return
        log.info("ocpp %s: CSMS unreachable: %s refused (InternalError)", self.charger_id, action)
        await self._refuse(
            unique_id, InternalError("CSMS unreachable", {"cause": "the CSMS is unreachable"})
        )

    async def _refuse(self, unique_id: str, error: OCPPError) -> None:
        self._s.counters.call_errors += 1
        await self._charger.send(call_error_json(unique_id, error, self._spell))

    async def _answer_bad_frame(self, raw: str) -> None:
        try:
            parse_frame(raw)
        except FrameError as exc:
            self._s.counters.call_errors += 1
            await self._charger.send(exc.to_json(self._spell))

    async def _emit(self, captures: list[Capture]) -> None:
        if captures:
            await self._s.emit(captures)
            self._s.counters.readings += len(captures)

    # -- CSMS -> charger ------------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        delay = FIRST_RETRY_S
        cap = self._s.settings.upstream_retry_max_s
        up, self._first_upstream = self._first_upstream, None
        while True:
            if up is None:
                try:
                    up = await self._connect_upstream([Subprotocol(self.subprotocol or "")])
                except Exception as exc:  # the link must outlive any fault: logged, retried
                    expected = isinstance(
                        exc, OSError | TimeoutError | InvalidHandshake | NoUpstream | ConfigError
                    )
                    log.log(
                        logging.INFO if expected else logging.ERROR,
                        "ocpp %s: CSMS unreachable (%s); next try within %.1f s",
                        self.charger_id,
                        exc if isinstance(exc, ConfigError) else type(exc).__name__,
                        delay,
                        exc_info=None if expected else exc,
                    )
                    await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter
                    delay = min(delay * 2, cap)
                    continue
            failed = False
            try:
                async with self._turn, self._replay_lock:
                    self._replaying = up
                    try:
                        await self._replay(up)
                    finally:
                        self._replaying = None
                    self._up = up
                self._settled.set()
                delay = FIRST_RETRY_S
                log.info("ocpp %s: relaying to the CSMS", self.charger_id)
                async for raw in up:
                    if isinstance(raw, str):
                        await self._from_csms(raw)
            except (ConnectionClosed, TimeoutError) as exc:
                log.warning("ocpp %s: CSMS connection lost (%s)", self.charger_id, exc)
            except Exception as exc:  # e.g. the queue's disk: logged, the link retried
                log.error("ocpp %s: CSMS link failed; retrying", self.charger_id, exc_info=exc)
                failed = True
            finally:
                self._up = None
                self._settled.set()
                await up.close()
            if self._charger.state.name == "CLOSED":
                return
            if failed:
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter
                delay = min(delay * 2, cap)
            up = None
            log.warning("ocpp %s: CSMS connection closed; reconnecting", self.charger_id)

    async def _from_csms(self, raw: str) -> None:
        try:
            msg: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        out = raw
        if isinstance(msg, list) and len(msg) >= 3 and isinstance(msg[1], str):
            if msg[0] == CALLRESULT and msg[1] in self._in_flight:
                action, request = self._in_flight.pop(msg[1])
                if isinstance(msg[2], dict):
                    try:
                        await self._tap_result(msg[1], action, request, msg[2])
                    except OCPPError as error:  # not stored: not acknowledged either
                        await self._refuse(msg[1], error)
                        return
            elif msg[0] == CALLERROR:
                self._in_flight.pop(msg[1], None)
            elif msg[0] == CALL and len(msg) == 4 and isinstance(msg[3], dict):
                mapped = _map_tid(msg[3], lambda t: self._store.charger_tid(self.charger_id, t))
                if mapped is not None:
                    out = orjson.dumps([CALL, msg[1], msg[2], mapped]).decode()
        await self._charger.send(out)

    async def _tap_result(
        self, unique_id: str, action: str, request: dict[str, Any], result: dict[str, Any]
    ) -> None:
        await self._emit(self._tap.on_result(unique_id, action, request, result))
        tid, connector = result.get("transactionId"), request.get("connectorId")
        if action == "StartTransaction" and isinstance(tid, int) and isinstance(connector, int):
            await asyncio.to_thread(self._store.remember, self.charger_id, tid, connector)

    async def _replay(self, up: ClientConnection) -> None:
        """The charger's queued messages to the CSMS, in order, each once its answer is in."""
        queued = await asyncio.to_thread(self._store.pending, self.charger_id)
        if queued:
            log.info("ocpp %s: replaying %d queued messages", self.charger_id, len(queued))
        for q in queued:
            mapped = _map_tid(q.payload, lambda t: self._store.csms_tid(self.charger_id, t))
            await up.send(orjson.dumps([CALL, q.unique_id, q.action, mapped or q.payload]).decode())
            answer = await self._answer_to(up, q.unique_id)
            if answer[0] == CALLERROR:
                log.error(
                    "ocpp %s: the CSMS refused replayed %s %s (%s): dropped",
                    self.charger_id,
                    q.action,
                    q.unique_id,
                    answer[2] if len(answer) > 2 else "?",
                )
            elif q.gateway_tid is not None and isinstance(answer[2], dict):
                csms_tid = answer[2].get("transactionId")
                if isinstance(csms_tid, int):
                    await asyncio.to_thread(
                        self._store.map_transaction, self.charger_id, q.gateway_tid, csms_tid
                    )
                    log.info(
                        "ocpp %s: gateway transaction %d is the CSMS's %d",
                        self.charger_id,
                        q.gateway_tid,
                        csms_tid,
                    )
            await asyncio.to_thread(self._store.done, q.seq)

    async def _answer_to(self, up: ClientConnection, unique_id: str) -> list[Any]:
        """The CSMS's CALLRESULT/CALLERROR to ``unique_id``; other frames go on to the charger."""
        async with asyncio.timeout(self._s.settings.upstream_response_timeout_s):
            while True:
                raw = await up.recv()
                if isinstance(raw, bytes):
                    continue
                try:
                    msg: Any = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    msg = None
                if (
                    isinstance(msg, list)
                    and len(msg) >= 3
                    and msg[0] in (CALLRESULT, CALLERROR)
                    and msg[1] == unique_id
                ):
                    return msg
                await self._from_csms(raw)
