"""``DIR/stack.json``: what the local stack runs, where, and how to start each service again.

Everything needed to stop or restart a service later (pid, argv, extra environment, log file,
readiness check) is written here, so ``down``/``restart``/``status`` work from another shell.
The file holds the API keys: it is written atomically with mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from telemetry_common.errors import TelemetryError

STATE_FILE: Final = "stack.json"


class StackError(TelemetryError):
    """The stack cannot do what was asked (carries the state directory)."""

    def __init__(self, state_dir: Path, problem: str) -> None:
        super().__init__(problem)
        self.state_dir = state_dir


@dataclass
class ServiceRecord:
    """One service in stack.json."""

    pid: int | None
    argv: list[str]
    log_file: str
    #: Extra environment on top of the caller's (the TELEMETRY_* variables).
    env: dict[str, str] = field(default_factory=dict)
    #: {"tcp": [[host, port], ...]} | {"http": url, "status": code} | {"settle_s": seconds}
    ready: dict[str, Any] = field(default_factory=dict)


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: Path) -> dict[str, Any]:
    path = state_path(state_dir)
    if not path.is_file():
        raise StackError(state_dir, f"no {path}: start the stack with `telemetry-stack up`")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write stack.json atomically, mode 0600 (it holds the API keys)."""
    path = state_path(state_dir)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def records(state: dict[str, Any]) -> dict[str, ServiceRecord]:
    """The services of a state, in start order."""
    return {name: ServiceRecord(**raw) for name, raw in state.get("services", {}).items()}


def set_record(state: dict[str, Any], name: str, record: ServiceRecord) -> None:
    state.setdefault("services", {})[name] = asdict(record)
