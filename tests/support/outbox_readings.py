"""Readings for outbox tests: energy readings (kept longest when the budget is full) and
others, and the seqs an outbox still holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from edge_agent.capture import Capture
from edge_agent.outbox import Outbox

TS: Final = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def energy(n: int) -> bytes:
    return Capture("CP-1", TS, {"energy_wh": float(n), "power_w": 1.0}).to_body()


def other(n: int) -> bytes:
    """A reading without energy_wh (e.g. a temperature-only sample)."""
    return Capture("CP-1", TS, {"temperature_c": float(n)}).to_body()


def pending_seqs(box: Outbox) -> list[int]:
    return [r.seq for r in box.oldest(1_000_000, 1 << 40)]
