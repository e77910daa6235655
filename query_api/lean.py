"""The hot read routes (``latest``, ``history``) dispatched as plain ASGI, ahead of FastAPI.

FastAPI's router, dependency solving and request handling cost several times the answer itself
when the answer is in memory (~200 us against ~30 us for a ``latest`` from the mirror). The hot
routes are ordinary FastAPI routes (declared once, documented in OpenAPI, servable by FastAPI)
whose endpoints take the request and the raw path parameters only and check everything
themselves, key first, with the functions every route uses (:func:`query_api.auth.authorize`,
:func:`query_api.params.checked_id`, :func:`query_api.params.query_of`).

:class:`LeanDispatch` matches a ``GET`` against those routes' own patterns and calls their
endpoints directly; an error becomes the answer of the app's own exception handler, and the
route is noted in the scope as Starlette does (the metrics label it by its template). It decides
nothing: anything else goes on to FastAPI.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def routes_of(router: APIRouter, *endpoints: Endpoint) -> list[APIRoute]:
    """The ``GET`` routes of ``router`` served by ``endpoints`` (each must have one)."""
    found = [
        r
        for r in router.routes
        if isinstance(r, APIRoute) and r.endpoint in endpoints and r.methods == {"GET"}
    ]
    if len(found) != len(endpoints):
        raise ValueError(f"not every endpoint has a GET route in {router.prefix!r}")
    return found


class LeanDispatch:
    def __init__(self, app: ASGIApp, api: FastAPI, routes: Sequence[APIRoute]) -> None:
        self.app = app
        self.api = api
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for route in self.routes:
                match = route.path_regex.match(scope["path"])
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: APIRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = route
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **params)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        """The app's handler of ``exc`` (the most specific class first), as Starlette finds it."""
        handlers = self.api.exception_handlers
        return next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
