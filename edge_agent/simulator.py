"""A charger simulator: N chargers going through plausible charging sessions.

Each charger cycles Available -> Preparing -> Charging -> Finishing -> Available. While charging,
power ramps up to the charger's rating, tapers as the car's state of charge passes 80 %, and the
energy register only ever grows; voltage, current, frequency and temperature follow the power.
Sessions are minutes long (not hours) so a demo shows every state quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.capture import Capture

_RATINGS_W = (7_400.0, 11_000.0, 22_000.0)
_DURATION_S = {"Available": (20, 120), "Preparing": (5, 15), "Finishing": (5, 10)}


@dataclass(slots=True)
class _Charger:
    charger_id: str
    rating_w: float
    phases: int
    energy_wh: float
    status: str = "Available"
    left_s: float = 0.0
    power_w: float = 0.0
    soc_pct: float = 0.0
    capacity_wh: float = 60_000.0
    temperature_c: float = 22.0
    transaction: int = 0


class Simulator:
    """Produces one capture per charger per ``sample`` call, ``dt_s`` of simulated time apart."""

    def __init__(self, gateway_id: str, chargers: int, *, seed: int | None = None) -> None:
        # Not cryptography: a seeded generator makes demo and test data repeatable.
        self._rng = random.Random(seed)  # noqa: S311
        self._chargers = [
            _Charger(
                charger_id=f"{gateway_id}-cp{n:03d}",
                rating_w=self._rng.choice(_RATINGS_W),
                phases=3 if n % 3 else 1,
                energy_wh=round(self._rng.uniform(1e5, 5e6), 1),
                left_s=self._rng.uniform(0, 30),
            )
            for n in range(1, chargers + 1)
        ]

    @property
    def charger_ids(self) -> list[str]:
        return [c.charger_id for c in self._chargers]

    def sample(self, now: datetime, dt_s: float) -> list[Capture]:
        return [self._step(c, now, dt_s) for c in self._chargers]

    def _step(self, c: _Charger, now: datetime, dt_s: float) -> Capture:
        rng = self._rng
        c.left_s -= dt_s
        if c.status == "Charging":
            target = c.rating_w if c.soc_pct < 80 else c.rating_w * max(0.1, (100 - c.soc_pct) / 20)
            c.power_w += (target - c.power_w) * min(1.0, dt_s / 5) + rng.gauss(
                0, c.rating_w * 0.005
            )
            c.power_w = max(0.0, min(c.power_w, c.rating_w))
            delivered = c.power_w * dt_s / 3600
            c.energy_wh += delivered
            c.soc_pct = min(100.0, c.soc_pct + 100 * delivered / c.capacity_wh)
            if c.soc_pct >= 99.5 or c.left_s <= 0:
                self._enter(c, "Finishing")
        elif c.left_s <= 0:
            nxt = {"Available": "Preparing", "Preparing": "Charging", "Finishing": "Available"}
            self._enter(c, nxt[c.status])
        if c.status != "Charging":
            c.power_w = 0.0
        ambient = 22.0
        c.temperature_c += (ambient + 25 * c.power_w / 22_000 - c.temperature_c) * min(
            1.0, dt_s / 60
        )
        voltage = 230.0 + rng.gauss(0, 1.5)
        current = c.power_w / (voltage * c.phases)
        values = {
            "energy_wh": round(c.energy_wh, 1),
            "power_w": round(c.power_w, 1),
            "voltage_v": round(voltage, 1),
            "current_a": round(current * c.phases, 2),
            "frequency_hz": round(50.0 + rng.gauss(0, 0.02), 3),
            "temperature_c": round(c.temperature_c, 1),
        }
        for phase in range(1, c.phases + 1):
            values[f"current_l{phase}_a"] = round(current, 2)
        if c.status in {"Preparing", "Charging", "Finishing"}:
            values["soc_pct"] = round(c.soc_pct, 1)
        return Capture(
            charger_id=c.charger_id,
            ts=now,
            values=values,
            status=c.status,
            transaction_id=str(c.transaction) if c.status != "Available" else None,
        )

    def _enter(self, c: _Charger, status: str) -> None:
        c.status = status
        if status == "Charging":
            c.left_s = self._rng.uniform(60, 600)
        else:
            lo, hi = _DURATION_S[status]
            c.left_s = self._rng.uniform(lo, hi)
        if status == "Preparing":
            c.transaction += 1
            c.soc_pct = self._rng.uniform(10, 60)
            c.capacity_wh = self._rng.choice((40_000.0, 60_000.0, 77_000.0, 100_000.0))


class Pace:
    """The sampling interval, changeable while the simulator runs (the ``set-interval``
    command); a change takes effect at once, not after the current sleep."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._changed = asyncio.Event()

    def set(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._changed.set()

    async def sleep(self) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval_s):
                await self._changed.wait()


async def run_simulator(sim: Simulator, interval_s: float | Pace) -> AsyncIterator[list[Capture]]:
    """Yield a sample per charger every ``interval_s`` seconds of wall-clock time."""
    pace = interval_s if isinstance(interval_s, Pace) else Pace(interval_s)
    while True:
        yield sim.sample(datetime.now(UTC), pace.interval_s)
        await pace.sleep()
