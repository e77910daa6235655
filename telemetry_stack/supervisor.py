"""The recorded services of a local stack: start one and wait until it is ready, stop one by
its recorded PID, restart one, stop all (reverse start order), report their status.

A process is only ever stopped by the PID recorded in stack.json, after checking that the PID
still runs the recorded command.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from telemetry_common.errors import ConfigError
from telemetry_stack import servers
from telemetry_stack.state import (
    ServiceRecord,
    StackError,
    load_state,
    records,
    save_state,
    set_record,
    state_path,
)

READY_TIMEOUT_S: Final = 60.0
#: A service's log (``logs/{name}.log``) is rotated past this size: its content moves to
#: ``{name}.log.1`` (the one before is dropped), so a log takes at most about twice this.
LOG_MAX_BYTES: Final = 20 * 1024 * 1024
#: A service without a readiness endpoint counts as ready once it stayed up this long.
SETTLE_S: Final = 1.5


def pid_runs(pid: int | None, argv: list[str]) -> bool:
    """True if ``pid`` is alive and still runs ``argv`` (guards against PID reuse)."""
    if pid is None or not servers.pid_alive(pid):
        return False
    cmdline = servers.pid_cmdline(pid)
    if not cmdline:
        return True  # no /proc: trust the pid
    # A console script runs as `python /path/bin/telemetry-api`: match the program anywhere.
    return argv[0] in cmdline[:2] or Path(argv[0]).name in {Path(c).name for c in cmdline[:2]}


def ready_check(record: ServiceRecord, started: float) -> Callable[[], bool]:
    ready = record.ready
    if "tcp" in ready:
        targets = [(str(h), int(p)) for h, p in ready["tcp"]]
        return lambda: all(servers.port_open(h, p) for h, p in targets)
    if "http" in ready:
        url, status = str(ready["http"]), int(ready.get("status", 200))
        return lambda: servers.http_status(url) == status
    settle = float(ready.get("settle_s", SETTLE_S))
    return lambda: time.monotonic() - started >= settle


def launch(
    name: str,
    record: ServiceRecord,
    timeout: float = READY_TIMEOUT_S,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Start a recorded service and wait until it is ready; its new pid. ``record.pid`` is set
    as soon as the process exists, then ``on_started`` runs (to save the state early)."""
    proc = servers.ManagedProcess(
        name,
        record.argv,
        env={**os.environ, **record.env},
        log_file=Path(record.log_file),
    )
    proc.start()
    assert proc.pid is not None
    record.pid = proc.pid
    try:
        if on_started is not None:
            on_started()
        proc.wait_ready(ready_check(record, time.monotonic()), timeout)
    except BaseException:
        proc.stop()
        raise
    return proc.pid


def stop_service(name: str, record: ServiceRecord, timeout: float = 15.0) -> str:
    """Stop one service by its recorded pid; a sentence saying what happened."""
    pid = record.pid
    if pid is None or not servers.pid_alive(pid):
        record.pid = None
        return f"{name}: not running"
    if not pid_runs(pid, record.argv):
        record.pid = None
        return f"{name}: pid {pid} now runs another program; left alone"
    servers.stop_pid(pid, timeout)
    record.pid = None
    return f"stopped {name} (pid {pid})"


def program(name: str) -> str:
    """A console script of this project: next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(name, "command not found; install the project (`make bootstrap`)")


def running_services(state_dir: Path) -> list[str]:
    """The services of ``state_dir``'s stack.json that run now (none without the file)."""
    try:
        state = load_state(state_dir)
    except StackError:
        return []
    return [n for n, r in records(state).items() if pid_runs(r.pid, r.argv)]


def down(state_dir: Path, state: dict[str, Any] | None = None) -> list[str]:
    """Stop every recorded service in reverse start order; one line per service."""
    state_dir = Path(state_dir)
    if state is None:
        state = load_state(state_dir)
    lines = []
    recs = records(state)
    for name in reversed(list(recs)):
        lines.append(stop_service(name, recs[name]))
        set_record(state, name, recs[name])
    if state_path(state_dir).parent.is_dir():
        save_state(state_dir, state)
    return lines


def restart(state_dir: Path, name: str) -> int:
    """Stop one service by its recorded pid and start it again the same way; its new pid."""
    state = load_state(state_dir)
    recs = records(state)
    if name not in recs:
        raise StackError(state_dir, f"no service {name!r}; services: {', '.join(recs)}")
    rec = recs[name]

    def save() -> None:
        set_record(state, name, rec)
        save_state(state_dir, state)

    stop_service(name, rec)
    save()
    return launch(name, rec, on_started=save)


def status(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Per service: pid, running, ready (its readiness check passes now), log file."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in records(load_state(state_dir)).items():
        running = pid_runs(rec.pid, rec.argv)
        check = ready_check(rec, started=time.monotonic() - SETTLE_S)
        out[name] = {
            "pid": rec.pid if running else None,
            "running": running,
            "ready": running and check(),
            "log_file": rec.log_file,
        }
    return out


def rotate_logs(state_dir: Path, max_bytes: int = LOG_MAX_BYTES) -> list[str]:
    """Rotate each recorded service's log that grew past ``max_bytes``: copied to ``.log.1``,
    then truncated in place (the service keeps writing to its open file: each process was
    started with it in append mode, so its next line lands at the new start). What a service
    writes between the copy and the truncation is lost: a few lines, once per ``max_bytes``.
    The logs rotated, by path."""
    try:
        state = load_state(Path(state_dir))
    except StackError:
        return []
    rotated = []
    for rec in records(state).values():
        path = Path(rec.log_file)
        try:
            if path.stat().st_size <= max_bytes:
                continue
            shutil.copyfile(path, path.with_name(path.name + ".1"))
            os.truncate(path, 0)
        except FileNotFoundError:
            continue
        rotated.append(str(path))
    return rotated
