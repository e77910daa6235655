"""Certificate renewal in the running agent: before the client certificate expires, a new key
and certificate (:func:`edge_agent.enroll.renew`), then the MQTT session reconnects with them.

The task looks at the certificate file's notAfter every ``RENEW_CHECK_S``; once it is within
``RENEW_BEFORE_DAYS`` it renews. Readings are not at risk while it switches: they stay in the
outbox until the bridges confirm them stored, and a batch whose PUBACK the reconnect cut off is
sent again (a replay is harmless). A failed renewal is logged (WARNING, with what to do),
counted and retried with capped exponential backoff; the cloud's ``certificate_expiry`` alarm
(the state topic's ``cert_not_after``) warns before the certificate actually lapses.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edge_agent import enroll
from edge_agent.heartbeat import GatewayState, cert_not_after
from edge_agent.settings import EdgeSettings
from telemetry_common.errors import ConfigError
from telemetry_common.mqtt import AsyncMqttClient

log = logging.getLogger(__name__)

FIRST_RETRY_S = 10.0


@dataclass(slots=True)
class RenewalStats:
    renewals: int = 0
    failures: int = 0


class Renewal:
    """Renews the gateway's certificate before expiry (``run`` until cancelled)."""

    def __init__(
        self, settings: EdgeSettings, client: AsyncMqttClient, gateway: GatewayState
    ) -> None:
        if settings.enrollment_url is None:
            raise ValueError("renewal needs TELEMETRY_EDGE_ENROLLMENT_URL")
        self._settings = settings
        self._url = enroll.check_url(settings.enrollment_url)
        self._client = client
        self._gateway = gateway
        self.stats = RenewalStats()

    def due_in(self, now: datetime) -> timedelta | None:
        """How long until renewal is due (zero or less: now); None without a certificate."""
        not_after = cert_not_after(self._settings.mqtt.cert_file)
        if not_after is None:
            return None
        return not_after - timedelta(days=self._settings.renew_before_days) - now

    async def run(self) -> None:
        check = self._settings.renew_check_s
        failures = 0
        while True:
            due = self.due_in(datetime.now(UTC))
            if due is None or due.total_seconds() > 0:
                wait = check if due is None else min(check, due.total_seconds())
                await asyncio.sleep(wait)
                continue
            try:
                await self.renew_once()
            except Exception as exc:  # renewal must outlive any fault: logged, retried
                failures += 1
                self.stats.failures += 1
                delay = min(check, FIRST_RETRY_S * 2 ** min(failures - 1, 20))
                delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not a secret
                if not isinstance(exc, enroll.EnrollError | ConfigError | OSError):
                    log.error("certificate renewal failed unexpectedly", exc_info=exc)
                log.warning(
                    "certificate renewal failed (%s); retrying in %.0f s. The certificate "
                    "expires at %s: if this persists, check TELEMETRY_EDGE_ENROLLMENT_URL, or "
                    "enrol again with a new token (edge-agent enroll)",
                    exc,
                    delay,
                    self._gateway.not_after.isoformat() if self._gateway.not_after else "?",
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def renew_once(self) -> None:
        """Renew now: new pair installed, the state and metrics told, the session reconnected."""
        s = self._settings
        installed = await asyncio.to_thread(
            enroll.renew,
            self._url,
            s.gateway_id,
            s.mqtt.cert_file,
            s.mqtt.key_file,
            ca_file=s.enrollment_ca_file,
        )
        self.stats.renewals += 1
        self._gateway.reload_certificate()
        log.info(
            "certificate renewed: serial %#x, not after %s; reconnecting with it",
            installed.serial,
            installed.not_after,
        )
        await self._client.reload_certificate()
