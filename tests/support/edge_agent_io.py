"""An edge agent process seen from outside: its ``edge-agent outbox`` command, its outbox file
read while it runs, and a FIFO as its jsonl source."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from edge_agent.outbox import OutboxRow
from tests.support.processes import BIN


def outbox_cli(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "edge-agent"), "outbox", *args, "--json"],
        capture_output=True,
        check=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    result: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def open_fifo_writer(path: Path, timeout: float = 20.0) -> int:
    """The write end of a FIFO, once the agent opened the read end (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def peek_pending(outbox: Path) -> dict[int, bytes]:
    """The pending rows as a reader sees them while the agent runs (a WAL snapshot)."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT seq, body FROM outbox").fetchall()
    return {seq: OutboxRow(seq, bytes(body)).reading_json() for seq, body in rows}
