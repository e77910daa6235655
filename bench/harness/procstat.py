"""CPU seconds and resident memory of processes (``/proc/PID/stat``, ``/proc/PID/status``) and
of the whole machine (``/proc/stat``), read the same way by every benchmark."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class HasPid(Protocol):
    @property
    def pid(self) -> int | None: ...


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` figure from /proc/PID/status (VmHWM, VmRSS), or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None if unreadable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    # After the command: state(0) ... utime is field 14 of stat, i.e. index 11 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_snapshot(procs: Mapping[str, HasPid]) -> dict[str, float | None]:
    return {name: cpu_seconds(p.pid) for name, p in procs.items()}


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat (every process on the machine)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    return total - idle, total


def children_cpu() -> float:
    """CPU seconds of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of named processes, of reaped children (the load generator) and of the whole
    machine between ``start`` and ``stop``, as percent of one core."""

    def __init__(self, procs: Mapping[str, HasPid]) -> None:
        self.procs = procs

    def start(self) -> None:
        self._t = time.monotonic()
        self._cpu = cpu_snapshot(self.procs)
        self._children = children_cpu()
        self._machine = machine_busy()

    def stop(self, children: str) -> dict[str, float | None]:
        """Percent of one core per process; reaped children under the name ``children``."""
        span = time.monotonic() - self._t
        out: dict[str, float | None] = {}
        for name, proc in self.procs.items():
            before, after = self._cpu[name], cpu_seconds(proc.pid)
            out[name] = None if before is None or after is None else 100 * (after - before) / span
        out[children] = 100 * (children_cpu() - self._children) / span
        busy, total = machine_busy()
        d_busy, d_total = busy - self._machine[0], total - self._machine[1]
        cores = os.cpu_count() or 1
        out["machine (all processes)"] = 100 * cores * d_busy / d_total if d_total else None
        return out


def wait_quiet(pid: int | None, below_pct: float, timeout: float) -> float:
    """Wait (at most ``timeout``) until ``pid`` uses less than ``below_pct`` of a core over 2 s
    (a server compacting after a load would disturb the measurement); seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = cpu_seconds(pid)
        time.sleep(2.0)
        after = cpu_seconds(pid)
        if before is None or after is None or 100 * (after - before) / 2.0 < below_pct:
            break
    return time.monotonic() - t0
