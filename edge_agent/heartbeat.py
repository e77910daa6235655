"""The gateway's state topic: birth, heartbeat and last will (``{root}/{gateway}/state``, retained).

The birth (published by the MQTT client on every connect) and a heartbeat republished every
``STATE_INTERVAL_S`` while connected carry the gateway's health, so the cloud can raise
``gateway_offline``, ``edge_backlog`` and ``certificate_expiry`` without reaching the gateway::

    {"state": "online", "ts": ISO, "agent_version": "x.y.z", "interval_s": float,
     "outbox": {"depth": int, "oldest_unsent_ts": ISO | null, "unconfirmed": int,
                "drops": {reason: int}},
     "cert_not_after": ISO | null,
     "clock": {"unsynchronised": {"os": bool | null, "cloud": bool | null},
               "offset_s": float | null}}

``outbox`` is left out when the outbox statistics could not be read (not reported as empty);
``clock`` (edge_agent.clock) when the agent has no clock watch (``outbox drain``).
``outbox.drops`` are the outbox's counters of readings dropped without a PUBACK, by reason
(:mod:`edge_agent.drops`; they never go down); ``interval_s`` is how often the heartbeat comes, so
a reader can tell a heartbeat that stopped (``stale``) from one that is merely not due yet.
The last will (and a clean stop) stays ``{"state": "offline", "ts": ISO}``. Readers accept both
and ignore keys they do not know (docs/design.md, MQTT).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509

from edge_agent.clock import ClockWatch
from edge_agent.outbox import Outbox
from edge_agent.records import OutboxStats
from telemetry_common.mqtt import (
    AsyncMqttClient,
    NotConnectedError,
    PublishLostError,
    PublishRejectedError,
)

__all__ = [
    "GatewayState",
    "agent_version",
    "cert_not_after",
    "online_payload",
    "state_payload",
]

log = logging.getLogger(__name__)


def agent_version() -> str:
    """The installed package's version (``0.0.0`` when run from a source tree not installed)."""
    try:
        return version("charger-telemetry")
    except PackageNotFoundError:
        return "0.0.0"


def cert_not_after(cert_file: Path | None) -> datetime | None:
    """The notAfter of the first certificate in the PEM file ``cert_file`` (None: no file, or
    not a certificate)."""
    if cert_file is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def state_payload(state: str, *, now: datetime | None = None) -> bytes:
    """The short state document, ``{"state", "ts"}``: the last will and the clean ``offline``
    (and the birth of a session without a :class:`GatewayState`, such as ``outbox drain``)."""
    return orjson.dumps({"state": state, "ts": (now or datetime.now(UTC)).isoformat()})


def online_payload(
    *,
    now: datetime | None = None,
    version: str | None = None,
    outbox: OutboxStats | None = None,
    unconfirmed: int = 0,
    not_after: datetime | None = None,
    outbox_known: bool = True,
    clock: ClockWatch | None = None,
    interval_s: float | None = None,
) -> bytes:
    """The ``online`` document of the birth and the heartbeat: the agent version, the outbox
    (``outbox``'s depth and its oldest unsent reading's capture time; none: depth 0), the
    readings unconfirmed and the client certificate's notAfter. ``outbox_known`` False (its
    statistics could not be read): no ``outbox`` key at all, so the cloud keeps its
    ``edge_backlog`` alarm as it is rather than read an empty outbox. ``clock``: whether this
    gateway's clock is unsynchronised, per source, and its offset from the bridges' clock.
    ``interval_s``: the heartbeat's period (left out when None)."""
    now = now or datetime.now(UTC)
    oldest = None
    if outbox is not None and outbox.oldest_age_s is not None:
        oldest = datetime.fromtimestamp(now.timestamp() - outbox.oldest_age_s, UTC)
    doc: dict[str, Any] = {
        "state": "online",
        "ts": now.isoformat(),
        "agent_version": version or agent_version(),
        "outbox": {
            "depth": outbox.pending if outbox is not None else 0,
            "oldest_unsent_ts": _iso(oldest),
            "unconfirmed": unconfirmed,
            "drops": dict(sorted(outbox.dropped.items())) if outbox is not None else {},
        },
        "cert_not_after": _iso(not_after),
    }
    if interval_s is not None:
        doc["interval_s"] = interval_s
    if not outbox_known:
        del doc["outbox"]
    if clock is not None:
        offset = clock.offset_s()
        doc["clock"] = {
            "unsynchronised": clock.unsynchronised(),
            "offset_s": None if offset is None else round(offset, 3),
        }
    return orjson.dumps(doc)


class GatewayState:
    """What the gateway announces on its state topic, read afresh for every birth and heartbeat.

    The certificate is read at start and again by :meth:`reload_certificate` (a renewal calls
    it before the session reconnects with the new one), so it is the one the session presents.
    ``unconfirmed`` and ``clock`` are attached by the agent once it exists.
    """

    def __init__(
        self, outbox: Outbox | None, cert_file: Path | None, *, interval_s: float | None = None
    ) -> None:
        self._outbox = outbox
        self._cert_file = cert_file
        self.not_after = cert_not_after(cert_file)
        self.version = agent_version()
        self.unconfirmed: Callable[[], int] = lambda: 0
        self.clock: ClockWatch | None = None
        #: the heartbeat's period (``STATE_INTERVAL_S``), announced in the document
        self.interval_s = interval_s

    def reload_certificate(self) -> None:
        """Read the certificate file's notAfter again (after a renewal)."""
        self.not_after = cert_not_after(self._cert_file)

    def online(self) -> bytes:
        """The birth / heartbeat payload. Never raises (it runs on the MQTT network thread at
        connect): without outbox statistics (they failed), no ``outbox`` key."""
        stats = None
        known = True
        if self._outbox is not None:
            try:
                stats = self._outbox.stats()
            except Exception:
                known = False
                log.exception("outbox statistics unavailable for the state topic")
        return online_payload(
            version=self.version,
            outbox=stats,
            unconfirmed=self.unconfirmed(),
            not_after=self.not_after,
            outbox_known=known,
            clock=self.clock,
            interval_s=self.interval_s,
        )

    async def heartbeat(self, client: AsyncMqttClient, topic: str, interval_s: float) -> None:
        """Republish ``online()`` retained (QoS 1) every ``interval_s`` while connected, until
        cancelled; the birth covers each (re)connect, so a missed beat only waits for the next."""
        while True:
            await asyncio.sleep(interval_s)
            if not client.connected:
                continue
            payload = await asyncio.to_thread(self.online)
            try:
                async with asyncio.timeout(max(interval_s, 5.0)):
                    await client.publish(topic, payload, retain=True)
            except (TimeoutError, PublishLostError, NotConnectedError, PublishRejectedError) as e:
                log.debug("heartbeat not published: %s", e)
