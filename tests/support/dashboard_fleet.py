"""The fleet the dashboard tests store: four chargers on two gateways whose readings make every
panel show something (online, stale and offline chargers, 3- and 1-phase sessions, a seq gap),
and the batches that carry them over MQTT."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from telemetry_common.schema import SCHEMA_ID, format_ts
from tests.support.fixtures import InfluxTarget
from tests.support.sessions_data import session

# --- the data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    gateway: str
    charger: str
    seq: int
    ts: datetime
    status: str
    values: dict[str, float]

    @property
    def ms(self) -> int:
        return int(self.ts.timestamp() * 1000)


@dataclass
class Fleet:
    """What the module's bridge stored, and the names the selections refer to."""

    db: InfluxTarget
    readings: list[Reading]
    names: dict[str, str]
    bridge_metrics_url: str
    #: The sessions written to ``keep.sessions`` (tests/support/sessions_data.py), superseded
    #: points included.
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def of(self, *, charger: str | None = None, gateway: str | None = None) -> list[Reading]:
        return [
            r
            for r in self.readings
            if (charger is None or r.charger == charger)
            and (gateway is None or r.gateway == gateway)
        ]

    @property
    def gateways(self) -> list[str]:
        return sorted({r.gateway for r in self.readings})

    @property
    def chargers(self) -> list[str]:
        return sorted({r.charger for r in self.readings})


def make_readings(tag: str, t0: datetime) -> tuple[list[Reading], dict[str, str]]:
    """Four chargers on two gateways. By the dashboards' windows (online 5 min, stale 1 h):
    ``on3`` (3-phase) and ``on1`` (1-phase) are online, ``stale`` stale, ``off`` offline.
    Gateway ``b`` skips 5 seq numbers in the middle of ``on1``'s session."""
    n = {
        "a": f"gw.{tag}.a",
        "b": f"gw.{tag}.b",
        "on3": f"cp.{tag}.on3",
        "stale": f"cp.{tag}.stale",
        "off": f"cp.{tag}.off",
        "on1": f"cp.{tag}.on1",
    }
    raw: dict[str, list[tuple[datetime, str, str, dict[str, float]]]] = {"a": [], "b": []}
    for k in range(40):  # 20 min of a 3-phase session, every 30 s, the last 30 s ago
        raw["a"].append(
            (
                t0 - timedelta(seconds=1200 - 30 * k),
                n["on3"],
                "Charging",
                {
                    "power_w": 7000.0 + k,
                    "energy_wh": 10_000.0 + 100 * k,
                    "voltage_v": 231.0,
                    "voltage_l1_v": 230.0,
                    "voltage_l2_v": 231.0,
                    "voltage_l3_v": 232.0,
                    "current_a": 33.0,
                    "current_l1_a": 10.0,
                    "current_l2_a": 11.0,
                    "current_l3_a": 12.0,
                    "soc_pct": 20.0 + k,
                    "temperature_c": 30.0 + k / 10,
                },
            )
        )
    for k in range(31):  # idle, every minute, the last 10 min ago
        raw["a"].append(
            (
                t0 - timedelta(seconds=2400 - 60 * k),
                n["stale"],
                "Available",
                {
                    "power_w": 0.0,
                    "energy_wh": 500.0,
                    "voltage_v": 229.0,
                    "current_a": 0.0,
                    "temperature_c": 20.0,
                },
            )
        )
    for k in range(60):  # faulted, every minute, from 3 h to 2 h ago
        raw["b"].append(
            (
                t0 - timedelta(seconds=10_800 - 60 * k),
                n["off"],
                "Faulted",
                {"power_w": 0.0, "energy_wh": 42.0, "voltage_v": 0.0, "current_a": 0.0},
            )
        )
    for k in range(40):  # a 1-phase session, every 30 s, the last 20 s ago
        raw["b"].append(
            (
                t0 - timedelta(seconds=1190 - 30 * k),
                n["on1"],
                "Preparing" if k < 10 else "Charging",
                {
                    "power_w": 3000.0,
                    "energy_wh": 2000.0 + 50 * k,
                    "voltage_v": 230.0,
                    "current_a": 13.0,
                    "current_l1_a": 13.0,
                    "soc_pct": 50.0,
                    "temperature_c": 25.0,
                },
            )
        )
    readings: list[Reading] = []
    for gw in ("a", "b"):
        seq = 0
        gap_at = raw[gw][60 + 20][0] if gw == "b" else None  # on1's 21st reading
        for ts, charger, status, values in sorted(raw[gw], key=lambda r: r[0]):
            seq += 1
            if ts == gap_at:
                seq += 5
            readings.append(Reading(n[gw], charger, seq, ts, status, values))
    return readings, n


def batch_payload(gateway: str, readings: list[Reading]) -> bytes:
    """A ReadingBatch of ``gateway`` holding ``readings``."""
    return orjson.dumps(
        {
            "schema": SCHEMA_ID,
            "gateway_id": gateway,
            "readings": [
                {
                    "charger_id": r.charger,
                    "seq": r.seq,
                    "ts": format_ts(r.ts),
                    "status": r.status,
                    "values": r.values,
                }
                for r in readings
            ],
        }
    )


def make_sessions(names: dict[str, str], t0: datetime) -> list[dict[str, Any]]:
    """Sessions of ``on3`` and ``on1`` over the last six days (two of ``on3``'s on one UTC day,
    one active now) and a superseded point of one of them (readers leave it out)."""
    day, minute = timedelta(days=1), timedelta(minutes=1)
    on3, on1, gw_a, gw_b = names["on3"], names["on1"], names["a"], names["b"]
    d3 = (t0 - 3 * day).replace(hour=0, minute=0, second=0, microsecond=0)  # a UTC midnight
    return [
        session(on3, "s1", t0 - 6 * day, gateway_id=gw_a, ended_at=t0 - 6 * day + 50 * minute,
                energy_wh=8_000.0),
        session(on3, "s2", d3 + 60 * minute, gateway_id=gw_a, ended_at=d3 + 150 * minute,
                energy_wh=21_500.0),
        session(on3, "s3", d3 + 6 * 60 * minute, gateway_id=gw_a,
                ended_at=d3 + 7 * 60 * minute, energy_wh=4_250.0),
        session(on3, "s4", t0 - 20 * minute, gateway_id=gw_a, energy_wh=3_900.0),
        session(on1, "s5", t0 - 2 * day, gateway_id=gw_b, ended_at=t0 - 2 * day + 30 * minute,
                energy_wh=3_300.0),
        session(on1, "s6", t0 - 5 * day, gateway_id=gw_b, ended_at=t0 - 5 * day + 80 * minute,
                energy_wh=9_100.0),
        session(on3, "s2", d3 + 70 * minute, gateway_id=gw_a, ended_at=d3 + 150 * minute,
                energy_wh=20_000.0, state="superseded"),
    ]  # fmt: skip
