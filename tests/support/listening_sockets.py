"""What a server really listens on, read from /proc, and what its mosquitto.conf says it
listens on: for tests that no listener is exposed beyond what was configured."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def conf_listeners(conf: str) -> list[tuple[int, str, bool]]:
    """(port, bind address, has certfile) per ``listener`` of a rendered mosquitto.conf."""
    out: list[tuple[int, str, bool]] = []
    for line in conf.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            out.append((int(words[1]), words[2] if len(words) > 2 else "", False))
        elif words[0] == "certfile" and out:
            out[-1] = (out[-1][0], out[-1][1], True)
    return out


def _proc_addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process ``pid``
    (its socket inodes in /proc/PID/fd matched against /proc/PID/net/tcp and tcp6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[9]) in inodes:  # 0A = TCP_LISTEN
                addr, port = cols[1].split(":")
                found.add((str(_proc_addr(addr)), int(port, 16)))
    return found
