"""``X-API-Key`` authentication with roles ``read``, ``ingest`` and ``admin`` (admin may do all).

A missing or unknown key is 401 (with a ``WWW-Authenticate`` hint); a known key of another role
is 403. The presented key is compared with every configured key in constant time, so neither
timing nor the order of roles says how close a guess came.

Each key that may ingest is bound to a gateway id: the ``ingest`` and ``admin`` role keys to
``TELEMETRY_API_INGEST_GATEWAY``, each key of ``TELEMETRY_API_INGEST_KEYS`` to its own gateway.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from starlette.datastructures import State

from query_api.problems import ProblemError
from query_api.settings import Role

HEADER: Final = "X-API-Key"
#: The OpenAPI security requirement of a route that checks the key itself (:func:`authorize`).
SECURITY: Final[list[dict[str, list[str]]]] = [{"APIKeyHeader": []}]
CHALLENGE: Final = {"WWW-Authenticate": f'ApiKey header="{HEADER}"'}

api_key_header = APIKeyHeader(
    name=HEADER, auto_error=False, description="A key of the role the endpoint needs (or admin)."
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the role of the key and, for keys that may ingest, their gateway id."""

    role: Role
    gateway_id: str | None


def identify(
    presented: str, keys: dict[Role, bytes], ingest_keys: dict[str, bytes], ingest_gateway: str
) -> Principal | None:
    """The principal whose key is ``presented`` (every key compared, in constant time)."""
    found: Principal | None = None
    role = role_of(presented, keys)
    if role is not None:
        found = Principal(role, ingest_gateway if role in ("ingest", "admin") else None)
    given = presented.encode()
    for gateway, key in ingest_keys.items():
        if hmac.compare_digest(given, key):
            found = Principal("ingest", gateway)
    return found


def role_of(presented: str, keys: dict[Role, bytes]) -> Role | None:
    """The role whose key is ``presented``, comparing against every key in constant time."""
    given = presented.encode()
    found: Role | None = None
    for role, key in keys.items():
        if hmac.compare_digest(given, key):
            found = role
    return found


def authorize(state: State, presented: str | None, role: Role) -> Principal:
    """The caller whose key is ``presented`` if its role is ``role`` or ``admin``; else a 401 or
    403 problem. The one key check: :func:`require` and the dependency-free ``latest`` route
    call it."""
    if not presented:
        raise ProblemError(401, "unauthenticated", f"send a key in {HEADER}", headers=CHALLENGE)
    found = identify(presented, state.api_keys, state.ingest_keys, state.settings.ingest_gateway)
    if found is None:
        raise ProblemError(401, "unauthenticated", f"the {HEADER} is not valid", headers=CHALLENGE)
    if found.role != role and found.role != "admin":
        raise ProblemError(403, "forbidden", f"this endpoint needs a key of role {role!r}")
    return found


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets a request through only with a key of ``role`` or ``admin`` (and
    documents the key in OpenAPI)."""

    async def check(
        request: Request, presented: Annotated[str | None, Depends(api_key_header)]
    ) -> Principal:
        return authorize(request.app.state, presented, role)

    return check
