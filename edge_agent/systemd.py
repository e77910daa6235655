"""sd_notify without a dependency: readiness, watchdog and stopping for a ``Type=notify`` unit.

systemd passes ``NOTIFY_SOCKET`` (an AF_UNIX datagram socket; a leading ``@`` is the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The agent says
``READY=1`` once its outbox is open, ``WATCHDOG=1`` from its event loop every half
``WATCHDOG_USEC`` (a stuck loop stops the pings and systemd restarts the service) and
``STOPPING=1`` when it shuts down. Without ``NOTIFY_SOCKET`` (run by hand) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager named by ``environ`` (default: the process's)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith(("/", "@")):
            self._address = "\0" + address[1:] if address.startswith("@") else address
        elif address:
            log.warning("NOTIFY_SOCKET %r is not an AF_UNIX path: not notifying systemd", address)
        self.watchdog_s = _watchdog_s(env)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) in one datagram; False when there is nowhere to
        send them or sending failed (logged once: the agent carries on either way)."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd on %s: %s", self._address, exc)
                self._failed = True
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1", "STATUS=outbox open")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping the watchdog every half interval until cancelled (returns at once without one)."""
        if self.watchdog_s is None or self._address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd asked for, in seconds, if it is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # inherited from a parent: not ours to ping
    return int(usec) / 1_000_000
