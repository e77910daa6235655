"""``X-API-Key`` authentication with roles ``read``, ``ingest`` and ``admin`` (admin may do all).

A missing or unknown key is 401 (with a ``WWW-Authenticate`` hint); a known key of another role
is 403. The presented key is compared with every configured key in constant time, so neither
timing nor the order of roles says how close a guess came.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from query_api.problems import ProblemError
from query_api.settings import Role

HEADER: Final = "X-API-Key"
CHALLENGE: Final = {"WWW-Authenticate": f'ApiKey header="{HEADER}"'}

api_key_header = APIKeyHeader(
    name=HEADER, auto_error=False, description="A key of the role the endpoint needs (or admin)."
)


def role_of(presented: str, keys: dict[Role, bytes]) -> Role | None:
    """The role whose key is ``presented``, comparing against every key in constant time."""
    given = presented.encode()
    found: Role | None = None
    for role, key in keys.items():
        if hmac.compare_digest(given, key):
            found = role
    return found


def require(role: Role) -> Callable[..., Awaitable[Role]]:
    """A dependency that lets a request through only with a key of ``role`` or ``admin``."""

    async def check(
        request: Request, presented: Annotated[str | None, Depends(api_key_header)]
    ) -> Role:
        if not presented:
            raise ProblemError(401, "unauthenticated", f"send a key in {HEADER}", headers=CHALLENGE)
        keys: dict[Role, bytes] = request.app.state.api_keys
        found = role_of(presented, keys)
        if found is None:
            raise ProblemError(
                401, "unauthenticated", f"the {HEADER} is not valid", headers=CHALLENGE
            )
        if found != role and found != "admin":
            raise ProblemError(403, "forbidden", f"this endpoint needs a key of role {role!r}")
        return found

    return check
