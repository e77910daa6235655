"""The OCPP central system (1.6J and 2.0.1) the site's chargers connect to, as an edge-agent source.

``ocpp_source(settings)`` has the shape of every source (``AsyncIterator[list[Capture]]``) and
serves until cancelled. A batch is yielded; when the consumer asks for the next one it has stored
this one (the agent appends to its outbox before it iterates again), and only then are the
chargers' requests that produced it answered. Requests wait in a bounded queue
(``max_pending``): a stalled agent makes chargers wait for their answers, it never drops data.

Handshake: WebSocket subprotocol ``ocpp2.0.1`` or ``ocpp1.6`` (required; a charger that offers
both gets 2.0.1), and the session is that version's. The charger id is the last segment of the
URL path, allow-listed (``^[A-Za-z0-9._-]{1,64}$``), else HTTP 404; beyond ``max_chargers``
connections, HTTP 503; then the charger's security profile (:mod:`edge_agent.ocpp.auth`, the
chargers file): 401/403. A second connection for a connected id is refused (409) unless it
authenticated (profile >= 1): then it replaces the first.

``mode=proxy`` (:mod:`edge_agent.ocpp.proxy`): the handshake first opens the charger's
connection to the CSMS, offering the charger's subprotocols; the charger gets the one the CSMS
picked. A CSMS that refuses the charger (HTTP 4xx) has the charger refused with the same status;
an unreachable one does not stop the charger (it gets its first subprotocol the gateway can
speak offline, and the relay keeps trying the CSMS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import unquote, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
)
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from edge_agent.capture import Capture
from edge_agent.ocpp.auth import Authenticator
from edge_agent.ocpp.chargers import ChargersConfig, load_chargers
from edge_agent.ocpp.idtags import load_salt
from edge_agent.ocpp.lib import InternalError
from edge_agent.ocpp.offline import OfflineStore, store_path
from edge_agent.ocpp.proxy import OFFLINE_SUBPROTOCOLS, NoUpstream, Relay, open_upstream
from edge_agent.ocpp.session import ChargerSession, Counters, Shared
from edge_agent.ocpp.settings import OcppSettings
from edge_agent.ocpp.transactions import TransactionStore
from edge_agent.ocpp.translate import Translator
from edge_agent.ocpp.v201.session import SUBPROTOCOL as V201
from edge_agent.ocpp.v201.session import ChargerSession201
from telemetry_common.errors import ConfigError
from telemetry_common.ids import is_valid_id

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp1.6")
SUBPROTOCOL_201 = Subprotocol(V201)
#: In the order of preference: a charger that offers both speaks 2.0.1.
SUBPROTOCOLS: Final = (SUBPROTOCOL_201, SUBPROTOCOL)
#: Captures handed to the agent at once (about: whole requests are taken).
MAX_BATCH = 500


def charger_id_from_path(path: str) -> str | None:
    """The last path segment, percent-decoded, if it is an allowed id."""
    last = urlsplit(path).path.rsplit("/", 1)[-1]
    charger_id = unquote(last)
    return charger_id if is_valid_id(charger_id) else None


class _NoFrameDumps(logging.LoggerAdapter[logging.Logger]):
    """The ``websockets.server`` logger without its DEBUG lines: at DEBUG websockets logs the
    start and end of every frame, which can hold an id tag (cut short, so it could not be taken
    out); the frames are logged, with the tags taken out, by the OCPP session."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


class StoreAborted(InternalError):
    """The source stopped before the agent stored these readings: the charger must resend."""


@dataclass(slots=True)
class _Pending:
    captures: list[Capture]
    stored: asyncio.Future[None]


class CentralSystem:
    """``async with CentralSystem(settings) as cs:`` listens; ``cs.captures()`` is the source."""

    def __init__(self, settings: OcppSettings, *, translator: Translator | None = None) -> None:
        self.settings = settings
        self.counters = Counters()
        self.translator = translator or Translator()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.max_pending)
        self._handed: list[_Pending] = []
        self._sessions: dict[str, ServerConnection] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._server: Server | None = None
        self._closing = False
        #: Connections past the handshake that authenticated (may replace a live one).
        self._authenticated: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        #: Handshakes admitted (or being checked) that have not reached _handle: they count
        #: against max_chargers (weak: a connection dropped before _handle leaves by itself).
        self._admitting: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._store: OfflineStore | None = None
        #: Proxy mode: the CSMS connection opened at a charger's handshake (None: unreachable).
        self._upstreams: dict[ServerConnection, ClientConnection | None] = {}
        #: The task serving each connection (a replaced relay is awaited until it is closed).
        self._handlers: weakref.WeakKeyDictionary[ServerConnection, asyncio.Task[object]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def proxy(self) -> bool:
        return self.settings.mode == "proxy"

    @property
    def port(self) -> int:
        assert self._server is not None, "not listening"
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CentralSystem:
        s = self.settings
        self._chargers_mtime = _mtime(s.chargers_file)
        chargers = await asyncio.to_thread(_chargers_config, s)
        self._auth = Authenticator(chargers, self.counters)
        transactions = await asyncio.to_thread(TransactionStore, s.state_path)
        for (charger_id, tid), (evse, connector) in transactions.located.items():
            self.translator.open_transaction(charger_id, tid, evse, connector)  # 2.0.1
        configured = s.id_tag_salt.get_secret_value() if s.id_tag_salt is not None else None
        salt = await asyncio.to_thread(load_salt, configured, s.state_path)
        self._shared = Shared(s, self.translator, transactions, self.counters, self._emit, salt)
        if self.proxy:
            _check_upstreams(s, chargers)
            self._store = await asyncio.to_thread(OfflineStore, store_path(s.state_path))
        self._server = await serve(
            self._handle,
            s.host,
            s.port,
            subprotocols=None if self.proxy else list(SUBPROTOCOLS),
            select_subprotocol=self._select_subprotocol if self.proxy else None,
            process_request=self._check_request,
            process_response=self._after_handshake,
            ssl=s.ssl_context(),
            max_size=s.max_message_bytes,
            close_timeout=2,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_interval_s,
            # proxy mode: the handshake waits for the CSMS's (UPSTREAM_OPEN_TIMEOUT_S)
            open_timeout=10 + (s.upstream_open_timeout_s if self.proxy else 0),
            logger=_NoFrameDumps(logging.getLogger("websockets.server")),
        )
        scheme = "wss" if s.cert_file else "ws"
        upstream = urlsplit(s.upstream_url or "")  # no userinfo in the log
        to = upstream.hostname or "the chargers file's upstream_url"
        what = f"proxy to {to}" if self.proxy else "(1.6J, 2.0.1) central system"
        log.info("ocpp %s on %s://%s:%d/<charger_id>", what, scheme, s.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        unanswered = self._handed + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for pending in unanswered:  # not stored: their chargers get a CALLERROR and resend
            if not pending.stored.done():
                pending.stored.set_exception(StoreAborted())
        if self._server is not None:
            self._server.close()  # the failed requests are answered before the sockets close
            try:
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            except TimeoutError:
                for task in self._tasks:
                    task.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        await self._server.wait_closed()
        for upstream in self._upstreams.values():  # handshakes that never finished
            if upstream is not None:
                await upstream.close()
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
        log.info("ocpp central system closed: %s", self.counters)

    async def captures(self) -> AsyncGenerator[list[Capture], None]:
        """Batches of captures, as chargers send them; runs until the caller stops."""
        while True:
            items = [await self._queue.get()]
            count = len(items[0].captures)
            while count < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
                count += len(items[-1].captures)
            self._handed = items
            yield [c for pending in items for c in pending.captures]
            # Resumed: the consumer has stored the batch, so the chargers may have their answers.
            self._handed = []
            for pending in items:
                if not pending.stored.done():
                    pending.stored.set_result(None)

    async def _emit(self, captures: list[Capture]) -> None:
        if not captures:
            return
        if self._closing:
            raise StoreAborted()
        pending = _Pending(captures, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        if self._closing:  # queued after the source stopped: nobody will store it
            raise StoreAborted()
        await pending.stored

    async def _check_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        charger_id = charger_id_from_path(request.path)
        if charger_id is None:
            self.counters.refused += 1
            log.warning(
                "ocpp: refused %r: the last path segment is not an allowed id", request.path
            )
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charger path\n")
        held = len(self._sessions) + len(self._admitting)
        if self._closing or (
            held >= self.settings.max_chargers and charger_id not in self._sessions
        ):
            self.counters.refused += 1
            log.warning("ocpp: refused %s: at max_chargers or closing", charger_id)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "no room for a charger\n")
        self._admitting.add(connection)
        try:
            response = await self._admit(connection, request, charger_id)
        except BaseException:
            self._admitting.discard(connection)
            raise
        if response is not None:
            self._admitting.discard(connection)
        return response

    async def _admit(
        self, connection: ServerConnection, request: Request, charger_id: str
    ) -> Response | None:
        await self._reload_chargers()
        verdict = await self._auth.check(connection, request, charger_id)
        if verdict.refusal is not None:
            return verdict.refusal
        if self._connected(charger_id) and not verdict.authenticated:
            return self._refuse_hijack(connection, charger_id)
        if verdict.authenticated:
            self._authenticated.add(connection)
        if self.proxy:
            await self._retire(charger_id)
            return await self._open_upstream(connection, request, charger_id)
        return None

    async def _retire(self, charger_id: str) -> None:
        """Proxy mode, an authenticated connection replaces a live one: close the old relay
        and wait until its CSMS connection is closed too, before the new one is opened (the
        CSMS sees one connection per charger at a time, as it would without the gateway)."""
        old = self._sessions.get(charger_id)
        if old is None:
            return
        log.info("ocpp %s: a new connection replaces the old one", charger_id)
        await old.close(reason="replaced by a newer connection")
        handler = self._handlers.get(old)
        if handler is not None:
            await asyncio.wait([handler], timeout=5)

    async def _reload_chargers(self) -> None:
        """Read the chargers file again if it changed since (checked at each handshake); a
        file that does not load is logged and the previous one stays in force."""
        mtime = _mtime(self.settings.chargers_file)
        if mtime == self._chargers_mtime:
            return
        self._chargers_mtime = mtime
        try:
            self._auth.chargers = await asyncio.to_thread(_chargers_config, self.settings)
        except ConfigError as exc:
            log.error("ocpp: %s; the previous chargers file stays in force", exc)
        else:
            log.info("ocpp: chargers file %s reloaded", self.settings.chargers_file)

    def _connected(self, charger_id: str) -> bool:
        """A live connection holds ``charger_id`` (a closing one does not)."""
        old = self._sessions.get(charger_id)
        return old is not None and old.state is State.OPEN

    def _refuse_hijack(self, connection: ServerConnection, charger_id: str) -> Response:
        self.counters.hijacks_refused += 1
        log.warning(
            "ocpp %s: refused a second connection from %s: the charger is connected and the "
            "newcomer did not authenticate",
            charger_id,
            connection.remote_address,
        )
        return connection.respond(HTTPStatus.CONFLICT, "charger already connected\n")

    async def _open_upstream(
        self, connection: ServerConnection, request: Request, charger_id: str
    ) -> Response | None:
        offered = [
            Subprotocol(p.strip())
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in header.split(",")
            if p.strip()
        ]
        try:
            upstream: ClientConnection | None = await open_upstream(
                self.settings, self._auth.chargers, charger_id, offered
            )
        except NoUpstream:
            self.counters.refused += 1
            log.warning(
                "ocpp: refused %s: no upstream CSMS URL for it (set upstream_url in the chargers "
                "file, for it or in [defaults], or TELEMETRY_EDGE_OCPP__UPSTREAM_URL)",
                charger_id,
            )
            return connection.respond(HTTPStatus.NOT_FOUND, "no CSMS for this charger\n")
        except ConfigError as exc:  # e.g. its client certificate no longer loads
            self.counters.refused += 1
            log.error("ocpp: refused %s: %s", charger_id, exc)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "gateway misconfigured\n")
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500:
                self.counters.refused += 1
                log.warning("ocpp: refused %s: the CSMS answered HTTP %d", charger_id, status)
                return connection.respond(HTTPStatus(status), "refused by the CSMS\n")
            upstream = None
            log.warning(
                "ocpp %s: CSMS answered HTTP %d: offline until it is back", charger_id, status
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            upstream = None
            log.warning("ocpp %s: CSMS unreachable (%s): offline until it is back", charger_id, exc)
        self._upstreams[connection] = upstream
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """Proxy mode: the CSMS's pick; without a CSMS, the first offered that the gateway can
        speak offline."""
        upstream = self._upstreams.get(connection)
        if upstream is not None:
            if upstream.subprotocol is not None and upstream.subprotocol in offered:
                return upstream.subprotocol
            self._drop_upstream(connection)
        for subprotocol in offered:
            if subprotocol in OFFLINE_SUBPROTOCOLS:
                return subprotocol
        self._drop_upstream(connection)
        raise NegotiationError(f"no supported subprotocol among {list(offered)}")

    def _after_handshake(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """A handshake that will not reach :meth:`_handle` (refused after it was admitted,
        e.g. a bad WebSocket version, or the charger gone meanwhile) frees its place and, in
        proxy mode, closes the CSMS connection opened for it: the CSMS must not see a charger
        that is not there."""
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS or connection.state is not (
            State.CONNECTING
        ):
            self._admitting.discard(connection)
            self._drop_upstream(connection)

    def _drop_upstream(self, connection: ServerConnection) -> None:
        upstream = self._upstreams.pop(connection, None)
        if upstream is not None:
            task = asyncio.get_running_loop().create_task(upstream.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = charger_id_from_path(ws.request.path)
        assert charger_id is not None  # checked at the handshake
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._admitting.discard(ws)
        self._handlers[ws] = task
        old = self._sessions.get(charger_id)
        if self._connected(charger_id) and ws not in self._authenticated:  # since the handshake
            self.counters.hijacks_refused += 1
            log.warning("ocpp %s: closed an unauthenticated second connection", charger_id)
            self._tasks.discard(task)
            self._drop_upstream(ws)  # proxy: its CSMS connection must not stay as a second one
            await ws.close(code=1008, reason="charger already connected")
            return
        self._sessions[charger_id] = ws
        self.counters.connections += 1
        try:
            if old is not None:
                log.info("ocpp %s: a new connection replaces the old one", charger_id)
                await old.close(reason="replaced by a newer connection")
            log.info(
                "ocpp %s connected from %s (%s)", charger_id, ws.remote_address, ws.subprotocol
            )
            if self._store is not None:
                upstream = self._upstreams.pop(ws, None)

                def connect(offered: list[Subprotocol]) -> Awaitable[ClientConnection]:
                    chargers = self._auth.chargers  # the file in force at each attempt
                    return open_upstream(self.settings, chargers, charger_id, offered)

                relay = Relay(charger_id, ws, upstream, self._shared, self._store, connect)
                await relay.run()
            else:
                session = ChargerSession201 if ws.subprotocol == SUBPROTOCOL_201 else ChargerSession
                await session(charger_id, ws, self._shared).start()
        except ConnectionClosed as exc:
            log.info("ocpp %s disconnected (%s)", charger_id, exc)
        finally:
            self._tasks.discard(task)
            if self._sessions.get(charger_id) is ws:
                del self._sessions[charger_id]


def _mtime(path: Path | None) -> tuple[int, int, int] | None:
    """What tells that the file changed: its mtime, size and inode (``passwd`` replaces it)."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)


def _check_upstreams(settings: OcppSettings, chargers: ChargersConfig) -> None:
    """Proxy mode: some upstream URL is configured, and every listed charger's credentials
    towards the CSMS load (certificate files); else :class:`ConfigError` at start."""
    if settings.upstream_url is None and not chargers.sets_upstream_urls():
        raise ConfigError(
            "ocpp.upstream_url",
            "mode=proxy needs the CSMS URL: TELEMETRY_EDGE_OCPP__UPSTREAM_URL or upstream_url "
            "in the chargers file ([defaults] or per charger)",
        )
    for charger_id in chargers.chargers:
        chargers.upstream_connect_kwargs(charger_id, settings.upstream_url_for(charger_id))


def _chargers_config(settings: OcppSettings) -> ChargersConfig:
    """The chargers file, checked against the endpoint: profile 2/3 need TLS, 3 a client CA."""
    if settings.chargers_file is None:
        return ChargersConfig.open()
    chargers = load_chargers(settings.chargers_file)
    profiles = chargers.profiles()
    if profiles & {2, 3} and settings.cert_file is None:
        raise ConfigError(
            "ocpp.cert_file", "security profile 2/3 in the chargers file needs TLS (wss://)"
        )
    if 3 in profiles and settings.client_ca_file is None:
        raise ConfigError(
            "ocpp.client_ca_file", "security profile 3 needs the CA of the chargers' certificates"
        )
    return chargers


async def ocpp_source(settings: OcppSettings) -> AsyncGenerator[list[Capture], None]:
    """The ``ocpp`` source of ``edge-agent run``: serve chargers until cancelled."""
    async with CentralSystem(settings) as cs, contextlib.aclosing(cs.captures()) as batches:
        async for batch in batches:
            yield batch
