"""free_port hands out ports no outgoing connection can take from under it."""

from __future__ import annotations

import socket

import pytest

from telemetry_stack.servers import _ephemeral_range, free_port


def test_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high]


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        # every candidate is the busy port: free_port must fall back, not return it
        monkeypatch.setattr("telemetry_stack.servers.random.randint", lambda a, b: busy)
        assert free_port() != busy
