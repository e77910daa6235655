"""The two hot read paths, as plain ASGI in front of FastAPI.

FastAPI resolves a route's parameters and dependencies for every request (key header, clock,
settings, a dozen query parameters), which costs several times the answer itself when the answer
is already in memory. This middleware serves exactly two cases, for a valid ``read``/``admin``
key:

- ``GET /v1/chargers/{id}/latest`` when the mirrored value is trusted
  (:func:`query_api.latest.trusted`): the document is built by the route's own function
  (:func:`query_api.latest.latest_body`);
- ``GET /v1/chargers/{id}/history`` downsampled (``every`` given, no ``cursor``) when the same
  request (path and query string) was answered 200 by the route with a page built less than
  ``HISTORY_CACHE_S`` ago: those bytes are sent again. A dashboard asks the same question over
  and over, and the route's page cache (:mod:`query_api.pagecache`) would answer it with that
  same page.

Everything else (no key, a bad key, a bad id or parameter, a value InfluxDB has to be asked
about, dependency overrides in tests) goes on to the FastAPI route, which stays the reference
and the OpenAPI documentation.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.auth import identify
from query_api.latest.document import latest_body
from query_api.latest.trust import trusted
from query_api.pagecache import PAGE_BUILT

PATH: Final = re.compile(r"/v1/chargers/([A-Za-z0-9._-]{1,64})/(latest|history)")
_KEY_HEADER: Final = b"x-api-key"
_JSON_HEADERS: Final = ((b"content-type", b"application/json"),)
#: Most history answers kept for replay, and their bytes in all.
REPLAY_MAX_ANSWERS: Final = 4096
REPLAY_MAX_BYTES: Final = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Template:
    """Stands for the matched route in ``scope["route"]`` (the metrics' route label)."""

    path: str


_ROUTES: Final = {
    "latest": _Template("/v1/chargers/{charger_id}/latest"),
    "history": _Template("/v1/chargers/{charger_id}/history"),
}


class ReadFastPath:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._answers: OrderedDict[tuple[str, bytes], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        match = PATH.fullmatch(scope["path"])
        if match is None or not self._may_read(scope):
            await self.app(scope, receive, send)
            return
        charger_id, kind = match.groups()
        if kind == "latest":
            body = self._latest(charger_id)
            if body is None:
                await self.app(scope, receive, send)
                return
        else:
            key = (scope["path"], scope["query_string"])
            body = self._replay(key)
            if body is None:
                await self._history_via_route(key, scope, receive, send)
                return
        scope["route"] = _ROUTES[kind]
        await _send_json(send, body)

    def _may_read(self, scope: Scope) -> bool:
        state = self.api.state
        if self.api.dependency_overrides:
            return False
        key = next((v for k, v in scope["headers"] if k == _KEY_HEADER), None)
        if not key:
            return False
        principal = identify(
            key.decode("latin-1"), state.api_keys, state.ingest_keys, state.settings.ingest_gateway
        )
        return principal is not None and principal.role in ("read", "admin")

    # -- latest ------------------------------------------------------------------------------
    def _latest(self, charger_id: str) -> bytes | None:
        state = self.api.state
        if state.broker is None or not state.broker.connected:
            return None
        mirror = state.mirror
        entry = mirror.get(charger_id)
        if entry is None or not trusted(entry, state.settings, time.monotonic()):
            return None
        doc: dict[str, Any] = latest_body(
            entry.snapshot,
            "mirror",
            now=datetime.now(UTC),
            gateway_state=mirror.gateway_state(entry.snapshot.gateway_id),
            settings=state.settings,
        )
        return orjson.dumps(doc)

    # -- history -----------------------------------------------------------------------------
    def _replay(self, key: tuple[str, bytes]) -> bytes | None:
        held = self._answers.get(key)
        if held is None:
            return None
        if time.monotonic() - held[0] >= self.api.state.settings.history_cache_s:
            self._drop(key)
            return None
        return held[1]

    async def _history_via_route(
        self, key: tuple[str, bytes], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Let the route answer; keep a 200 answer of a downsampled first page for replay."""
        replayable = _replayable(scope["query_string"]) and self.api.state.settings.history_cache_s
        status = 0
        parts: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and replayable and status == 200:
                parts.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, keep if replayable else send)
        built = scope.get(PAGE_BUILT)
        if replayable and status == 200 and isinstance(built, float):
            self._keep(key, built, b"".join(parts))

    def _keep(self, key: tuple[str, bytes], at: float, body: bytes) -> None:
        self._drop(key)
        if len(body) > REPLAY_MAX_BYTES:
            return
        self._answers[key] = (at, body)
        self._bytes += len(body)
        while self._bytes > REPLAY_MAX_BYTES or len(self._answers) > REPLAY_MAX_ANSWERS:
            _, (_, old) = self._answers.popitem(last=False)
            self._bytes -= len(old)

    def _drop(self, key: tuple[str, bytes]) -> None:
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])


def _replayable(query_string: bytes) -> bool:
    """A downsampled first page: ``every`` given and no ``cursor`` (raw points and later pages
    are never replayed)."""
    names = {k for k, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)}
    return "every" in names and "cursor" not in names


async def _send_json(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})
