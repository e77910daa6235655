"""Who may connect as a charger: OCPP security profiles 1-3, checked at the WebSocket handshake.

    profile 0   no credentials (an isolated site network; plain ws:// needs allow_plaintext)
    profile 1   HTTP Basic: username = the charger id, password checked against its scrypt hash
    profile 2   TLS (wss://) + HTTP Basic
    profile 3   TLS with a client certificate from ``client_ca_file`` whose CN (or a DNS SAN)
                is the charger id

A refusal says nothing about which part was wrong (401 + ``WWW-Authenticate: Basic`` for 1/2, 403
for 3), is counted and logged without the password. An address with
:data:`MAX_FAILURES` failures in the last minute, checks in progress included, gets 429 without
a check (no scrypt work); at most :data:`MAX_CHECKS` password checks run at once in all, so a
flood of handshakes neither holds scrypt's memory many times over nor takes the worker threads
the agent's other blocking work needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from edge_agent.ocpp.chargers import Charger, ChargersConfig
from edge_agent.ocpp.session import Counters

log = logging.getLogger(__name__)

#: OCPP 1.6 security whitepaper: the Basic auth password (AuthorizationKey) is 16-40 characters.
MIN_PASSWORD, MAX_PASSWORD = 16, 40
#: scrypt cost: 16 MiB and about 30 ms per check (dev machine; more on a small gateway).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: Failed handshakes per remote address and minute before it gets 429 unchecked.
MAX_FAILURES = 10
WINDOW_S = 60.0
#: Remote addresses remembered for throttling; beyond it the stale ones are forgotten.
MAX_ADDRESSES = 4096
#: Password checks (scrypt, 16 MiB each) running at once, all addresses together.
MAX_CHECKS = 2


class PasswordError(ValueError):
    """A password that cannot be set (length)."""


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise PasswordError(
            f"a charger password has {MIN_PASSWORD} to {MAX_PASSWORD} characters "
            f"(OCPP security profile 1), not {len(password)}"
        )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt>$<key>`` (base64), a fresh 16-byte salt per entry."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison of the keys)."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = stored.split("$")
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        cost = int(n), int(r), int(p)
    except (ValueError, binascii.Error):
        return False
    if scheme != "scrypt" or not 2 <= cost[0] <= 2**20 or cost[1] * cost[2] > 64:
        return False
    got = hashlib.scrypt(
        password.encode(), salt=salt, n=cost[0], r=cost[1], p=cost[2], dklen=len(key),
        maxmem=256 * 1024 * 1024,
    )  # fmt: skip
    return hmac.compare_digest(got, key)


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """``(username, password)`` of an ``Authorization: Basic`` header, if well-formed."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def certificate_names(connection: ServerConnection) -> set[str]:
    """The CN and DNS SANs of the client's verified TLS certificate (empty without one)."""
    peer = connection.transport.get_extra_info("peercert") if connection.transport else None
    if not peer:
        return set()
    names = {
        value
        for rdn in peer.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    }  # fmt: skip
    names |= {value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"}
    return names


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal`` to send instead of the handshake, or None; ``authenticated``: the charger
    proved who it is (profile >= 1), so it may replace a live connection with its id."""

    refusal: Response | None
    authenticated: bool = False


class Authenticator:
    """The handshake check of one central system (both modes, local and proxy)."""

    def __init__(self, chargers: ChargersConfig, counters: Counters) -> None:
        self.chargers = chargers
        self.counters = counters
        self._recent: dict[str, deque[float]] = {}
        #: Checks in progress per address: they count against it like failures.
        self._checking: Counter[str] = Counter()
        self._checks = asyncio.Semaphore(MAX_CHECKS)

    async def check(
        self, connection: ServerConnection, request: Request, charger_id: str
    ) -> Verdict:
        address = _host(connection)
        if self._throttled(address):
            self.counters.auth_refused += 1
            log.warning("ocpp %s: refused %s: too many failed handshakes", charger_id, address)
            return Verdict(connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "try later\n"))
        self._checking[address] += 1
        try:
            return await self._check(connection, request, charger_id, address)
        finally:
            self._checking[address] -= 1
            if not self._checking[address]:
                del self._checking[address]

    async def _check(
        self, connection: ServerConnection, request: Request, charger_id: str, address: str
    ) -> Verdict:
        charger = self.chargers.charger(charger_id)
        profile = charger.security_profile if charger else self.chargers.default_profile
        if charger is not None and profile == 0:
            return Verdict(None)
        if charger is not None and profile == 3:
            ok = charger_id in certificate_names(connection)
            reason = "no client certificate for this id"
        elif charger is not None:
            ok = await self._password_ok(charger, request)
            reason = "missing or wrong Basic credentials"
        else:  # as slow as a wrong password: the timing does not tell which ids exist
            await self._password_ok(Charger(charger_id), request)  # no hash: always False
            ok, reason = False, "not in the chargers file"
        if ok:
            return Verdict(None, authenticated=True)
        self.counters.auth_refused += 1
        self._remember_failure(address)
        log.warning("ocpp %s: refused %s (profile %d): %s", charger_id, address, profile, reason)
        if profile == 3:
            return Verdict(connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n"))
        refusal = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication required\n")
        refusal.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
        return Verdict(refusal)

    async def _password_ok(self, charger: Charger, request: Request) -> bool:
        credentials = basic_credentials(request.headers)
        if credentials is None:
            return False
        username, password = credentials
        stored = charger.password_hash or _dummy_hash()
        async with self._checks:
            matches = await asyncio.to_thread(verify_password, stored, password)
        same_user = hmac.compare_digest(username.encode(), charger.charger_id.encode())
        return matches and same_user and charger.password_hash is not None

    def _remember_failure(self, address: str) -> None:
        if address not in self._recent and len(self._recent) >= MAX_ADDRESSES:
            horizon = time.monotonic() - WINDOW_S
            for stale in [a for a, times in self._recent.items() if times[-1] < horizon]:
                del self._recent[stale]
            if len(self._recent) >= MAX_ADDRESSES:  # all recent: forget the oldest one
                del self._recent[min(self._recent, key=lambda a: self._recent[a][-1])]
        self._recent.setdefault(address, deque(maxlen=MAX_FAILURES)).append(time.monotonic())

    def _throttled(self, address: str) -> bool:
        checking = self._checking[address]
        recent = self._recent.get(address)
        if recent is None:
            return checking >= MAX_FAILURES
        horizon = time.monotonic() - WINDOW_S
        while recent and recent[0] < horizon:
            recent.popleft()
        if not recent:
            del self._recent[address]
            return checking >= MAX_FAILURES
        return len(recent) + checking >= MAX_FAILURES


@functools.cache
def _dummy_hash() -> str:
    """Checked against when there is no hash (an unknown id): that costs as much as a check."""
    return hash_password("not a password of any charger", salt=bytes(16))


def _host(connection: ServerConnection) -> str:
    try:
        return str(connection.remote_address[0])
    except (TypeError, IndexError):
        return "?"
