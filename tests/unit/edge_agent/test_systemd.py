"""sd_notify (edge_agent.systemd) against a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_ready_and_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    """READY=1 and STOPPING=1 arrive as datagrams on NOTIFY_SOCKET."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready()
    assert sock.recv(4096).decode().splitlines()[0] == "READY=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_address() -> None:
    """A NOTIFY_SOCKET starting with ``@`` is an abstract socket (Linux)."""
    name = f"charger-telemetry-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


async def test_watchdog_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    """With WATCHDOG_USEC for this pid, WATCHDOG=1 is sent repeatedly from the event loop."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.watchdog_s == pytest.approx(0.1)
    task = asyncio.create_task(notifier.watchdog())
    try:
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 64), 5) for _ in range(3)]
    finally:
        task.cancel()
    assert pings == [b"WATCHDOG=1"] * 3


async def test_watchdog_for_another_pid_is_ignored(listener: tuple[socket.socket, str]) -> None:
    """A WATCHDOG_PID that is not ours (inherited) means no watchdog: the task returns."""
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    notifier = Notifier(env)
    assert notifier.watchdog_s is None
    await asyncio.wait_for(notifier.watchdog(), 5)


def test_without_notify_socket_nothing_is_sent() -> None:
    """Run by hand (no NOTIFY_SOCKET), every call is a no-op."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_s is None


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    """A socket that is gone makes notify() return False; the agent carries on."""
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()
