"""One process per outbox: the agent and ``outbox drain`` hold an exclusive lock on
``OUTBOX.lock`` (flock, released by the kernel when the process dies, even by SIGKILL)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from telemetry_common.errors import TelemetryError


class OutboxBusyError(TelemetryError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"another edge-agent process is using {path} (lock {path}.lock)")
        self.path = path


@contextmanager
def exclusive(outbox_path: Path) -> Iterator[None]:
    lock_path = Path(f"{outbox_path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutboxBusyError(outbox_path) from exc
        yield
    finally:
        os.close(fd)
