"""The hot path of ``GET /v1/chargers/{id}/latest``, as plain ASGI in front of FastAPI.

FastAPI resolves a route's dependencies for every request (key header, clock, settings), which
costs several times the answer itself when memory answers. This middleware serves exactly one
case: a valid ``read``/``admin`` key, a well-formed id, and a mirrored value that
:func:`query_api.latest.trusted` lets memory answer. It builds the same document with the same
functions as the route (:func:`query_api.latest.latest_body`). Everything else (no key, a bad
key, a bad id, a value InfluxDB has to be asked about, dependency overrides in tests) goes on to
the FastAPI route, which stays the reference and the OpenAPI documentation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from query_api.auth import identify
from query_api.latest import latest_body, trusted

PATH: Final = re.compile(r"/v1/chargers/([A-Za-z0-9._-]{1,64})/latest")
TEMPLATE: Final = "/v1/chargers/{charger_id}/latest"
_KEY_HEADER: Final = b"x-api-key"


@dataclass(frozen=True, slots=True)
class _Template:
    path: str


_ROUTE: Final = _Template(TEMPLATE)


class LatestFastPath:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = PATH.fullmatch(scope["path"])
            if match is not None:
                body = self._answer(scope, match.group(1))
                if body is not None:
                    scope["route"] = _ROUTE  # read by TimingMiddleware for its route label
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope, charger_id: str) -> bytes | None:
        api = self.api
        state = api.state
        if api.dependency_overrides or state.broker is None or not state.broker.connected:
            return None
        key = next((v for k, v in scope["headers"] if k == _KEY_HEADER), None)
        if not key:
            return None
        principal = identify(
            key.decode("latin-1"),
            state.api_keys,
            state.ingest_keys,
            state.settings.ingest_gateway,
        )
        if principal is None or principal.role not in ("read", "admin"):
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
