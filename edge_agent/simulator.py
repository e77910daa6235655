"""A charger simulator: N chargers going through plausible charging sessions.

Each charger cycles Available -> Preparing -> Charging -> Finishing -> Available. While charging,
power ramps up to the charger's rating, tapers as the car's state of charge passes 80 %, and the
energy register only ever grows; voltage, current, frequency and temperature follow the power.
Sessions are minutes long (not hours) so a demo shows every state quickly.

A session is a transaction, as an OCPP charger reports one:

- it starts when the charger enters Preparing (a driver badged a card): that reading has a new
  ``transaction_id``, ``tx_event`` ``started`` (its ``energy_wh`` is the meterStart) and the
  ``id_tag_hash`` of the driver's card (fake 7-byte RFID UIDs, a pool of drivers per gateway,
  hashed with a fixed simulator salt);
- Preparing, Charging and Finishing readings carry its ``transaction_id``;
- it ends when the charger is Available again (the car was unplugged): that reading still
  carries the ``transaction_id``, with ``tx_event`` ``ended`` (``energy_wh`` = meterStop),
  ``stop_reason`` ``EVDisconnected`` (OCPP's reason when the cable is pulled at the car's end,
  the usual end of a session) and the card's hash.

Transaction ids are ``max(last + 1, milliseconds since 2025-01-01 of the reading's ts)``, one
counter per simulator (so unique per gateway): a restarted agent's first id is later than
anything the previous process handed out (for a wall clock that does not step back; a process
would have to start more than 1,000 sessions a second to run ahead of the clock).

Each charger's identity (vendor, model, serial, firmware, and the rating and phases its model
implies) follows from its id alone, so it is the same in every run, and is reported as
``charger_info`` on the charger's first reading of each process (as a charger sends a
BootNotification when it starts). The seed (``SIM__SEED``) makes everything else repeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from edge_agent.capture import Capture
from edge_agent.ocpp.idtags import hash_id_tag

_DURATION_S = {"Available": (20, 120), "Preparing": (5, 15), "Finishing": (5, 10)}
_EPOCH: Final = datetime(2025, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
STOP_REASON: Final = "EVDisconnected"
#: The simulator's id-tag salt: not a secret, its tags are made up.
SIM_SALT: Final = b"charger-telemetry simulator"
DRIVERS_PER_CHARGER: Final = 3
#: (vendor, serial prefix, model series, firmware major versions); made-up makers.
_MAKERS: Final = (
    ("Voltaro", "VLT", "Homeline", (2, 3)),
    ("Ampera Systems", "AMS", "CityPost", (4, 5)),
    ("Nordwatt", "NWT", "Fjord", (1, 2)),
    ("Kestrel EV", "KEV", "K", (6, 7)),
)
#: (phases, rating): a single-phase charger is a 7.4 kW wallbox, a three-phase one 11 or 22 kW.
_RATINGS: Final = ((1, 7_400.0), (3, 11_000.0), (3, 22_000.0))


@dataclass(frozen=True, slots=True)
class Identity:
    """What a simulated charger says about itself, and the hardware that goes with it."""

    vendor: str
    model: str
    serial: str
    firmware: str
    phases: int
    rating_w: float

    def info(self) -> dict[str, str]:
        return {
            "vendor": self.vendor,
            "model": self.model,
            "serial": self.serial,
            "firmware": self.firmware,
        }


def identity(charger_id: str) -> Identity:
    """A plausible identity for ``charger_id``, the same in every run (seeded by the id)."""
    rng = random.Random(f"identity:{charger_id}")  # noqa: S311 - not cryptography
    vendor, prefix, series, majors = rng.choice(_MAKERS)
    phases, rating_w = rng.choice(_RATINGS)
    kw = f"{rating_w / 1000:g}"
    return Identity(
        vendor=vendor,
        model=f"{series} {kw}{'T' if phases == 3 else 'S'}",
        serial=f"{prefix}{rng.randint(20, 25)}{rng.randint(0, 999_999):06d}",
        firmware=f"{rng.choice(majors)}.{rng.randint(0, 12)}.{rng.randint(0, 30)}",
        phases=phases,
        rating_w=rating_w,
    )


def driver_tags(gateway_id: str, count: int) -> list[str]:
    """``count`` fake RFID card UIDs (7 bytes, NXP's ``04`` first), the same in every run."""
    rng = random.Random(f"drivers:{gateway_id}")  # noqa: S311 - not cryptography
    return ["04" + f"{rng.getrandbits(48):012X}" for _ in range(count)]


@dataclass(slots=True)
class _Charger:
    charger_id: str
    identity: Identity
    energy_wh: float
    status: str = "Available"
    left_s: float = 0.0
    power_w: float = 0.0
    soc_pct: float = 0.0
    capacity_wh: float = 60_000.0
    temperature_c: float = 22.0
    #: The open session: its transaction id and the hash of the card that started it.
    transaction: str | None = None
    id_tag_hash: str | None = None
    #: Its identity was reported (on the first reading of this process).
    introduced: bool = False


class Simulator:
    """Produces one capture per charger per ``sample`` call, ``dt_s`` of simulated time apart."""

    def __init__(self, gateway_id: str, chargers: int, *, seed: int | None = None) -> None:
        # Not cryptography: a seeded generator makes demo and test data repeatable.
        self._rng = random.Random(seed)  # noqa: S311
        self._chargers = [
            _Charger(
                charger_id=(cid := f"{gateway_id}-cp{n:03d}"),
                identity=identity(cid),
                energy_wh=round(self._rng.uniform(1e5, 5e6), 1),
                left_s=self._rng.uniform(0, 30),
            )
            for n in range(1, chargers + 1)
        ]
        self._tags = [
            hash_id_tag(SIM_SALT, tag)
            for tag in driver_tags(gateway_id, DRIVERS_PER_CHARGER * chargers)
        ]
        self._last_tid = 0

    @property
    def charger_ids(self) -> list[str]:
        return [c.charger_id for c in self._chargers]

    def sample(self, now: datetime, dt_s: float) -> list[Capture]:
        return [self._step(c, now, dt_s) for c in self._chargers]

    def _step(self, c: _Charger, now: datetime, dt_s: float) -> Capture:
        rng = self._rng
        rating_w = c.identity.rating_w
        c.left_s -= dt_s
        # This reading's transaction (the one that ends with it, if it does) and event.
        tid, tag, event = c.transaction, c.id_tag_hash, None
        if c.status == "Charging":
            target = rating_w if c.soc_pct < 80 else rating_w * max(0.1, (100 - c.soc_pct) / 20)
            c.power_w += (target - c.power_w) * min(1.0, dt_s / 5) + rng.gauss(0, rating_w * 0.005)
            c.power_w = max(0.0, min(c.power_w, rating_w))
            delivered = c.power_w * dt_s / 3600
            c.energy_wh += delivered
            c.soc_pct = min(100.0, c.soc_pct + 100 * delivered / c.capacity_wh)
            if c.soc_pct >= 99.5 or c.left_s <= 0:
                self._enter(c, "Finishing", now)
        elif c.left_s <= 0:
            nxt = {"Available": "Preparing", "Preparing": "Charging", "Finishing": "Available"}
            self._enter(c, nxt[c.status], now)
            if c.status == "Preparing":
                tid, tag, event = c.transaction, c.id_tag_hash, "started"
            elif c.status == "Available" and tid is not None:
                event = "ended"
        if c.status != "Charging":
            c.power_w = 0.0
        ambient = 22.0
        c.temperature_c += (ambient + 25 * c.power_w / 22_000 - c.temperature_c) * min(
            1.0, dt_s / 60
        )
        voltage = 230.0 + rng.gauss(0, 1.5)
        phases = c.identity.phases
        current = c.power_w / (voltage * phases)
        values = {
            "energy_wh": round(c.energy_wh, 1),
            "power_w": round(c.power_w, 1),
            "voltage_v": round(voltage, 1),
            "current_a": round(current * phases, 2),
            "frequency_hz": round(50.0 + rng.gauss(0, 0.02), 3),
            "temperature_c": round(c.temperature_c, 1),
        }
        for phase in range(1, phases + 1):
            values[f"current_l{phase}_a"] = round(current, 2)
        if c.status in {"Preparing", "Charging", "Finishing"}:
            values["soc_pct"] = round(c.soc_pct, 1)
        info = None
        if not c.introduced:
            c.introduced = True
            info = c.identity.info()
        return Capture(
            charger_id=c.charger_id,
            ts=now,
            values=values,
            status=c.status,
            transaction_id=tid,
            tx_event=event,
            stop_reason=STOP_REASON if event == "ended" else None,
            id_tag_hash=tag if event is not None else None,
            charger_info=info,
        )

    def _transaction_id(self, now: datetime) -> str:
        """A new transaction id: :attr:`_last_tid` + 1, or the clock's milliseconds if later."""
        self._last_tid = max(self._last_tid + 1, (now - _EPOCH) // _MS)
        return str(self._last_tid)

    def _enter(self, c: _Charger, status: str, now: datetime) -> None:
        c.status = status
        if status == "Charging":
            c.left_s = self._rng.uniform(60, 600)
        else:
            lo, hi = _DURATION_S[status]
            c.left_s = self._rng.uniform(lo, hi)
        if status == "Preparing":
            c.transaction = self._transaction_id(now)
            c.id_tag_hash = self._rng.choice(self._tags)
            c.soc_pct = self._rng.uniform(10, 60)
            c.capacity_wh = self._rng.choice((40_000.0, 60_000.0, 77_000.0, 100_000.0))
        elif status == "Available":
            c.transaction = c.id_tag_hash = None


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
