"""Charging sessions as the tests read them: the sessions job started as a process, the sessions
API read whole (JSON pages and the CSV export), ``keep.sessions`` read straight from InfluxDB,
and a plain reference implementation of the rules of docs/design.md#sessions over the raw
readings, written here from the contract (nothing is imported from ``sessions/``) so the job can
be checked against it.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from telemetry_common.settings import env_for
from telemetry_common.storage import KEEP_RP, SESSION_MEASUREMENT

#: Fields of a session the API answers, compared key by key.
SESSION_KEYS = (
    "charger_id", "gateway_id", "evse_id", "connector_id", "transaction_id", "state",
    "started_at", "ended_at", "end_cause", "meter_start_wh", "meter_stop_wh", "energy_wh",
    "max_power_w", "duration_s", "stop_reason", "id_tag_hash", "readings", "flags",
)  # fmt: skip


def sessions_env(influx_url: str, database: str, **more: object) -> dict[str, str]:
    """The environment of ``telemetry-sessions`` (docs/settings.md): its InfluxDB, one pass a
    second, logs as JSON, and ``more`` settings (e.g. ``silence_s=...``)."""
    from sessions.settings import SessionsSettings  # the job's own model names the variables

    settings: dict[str, Any] = {
        "influx": {"url": influx_url, "database": database},
        "interval_s": 1.0,
        "log_format": "json",
        "http_port": 0,
    }
    return env_for(SessionsSettings, **(settings | more))


# --- reading what was computed -------------------------------------------------------------


def api_sessions(
    api: str, key: str, path: str, params: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every session of a sessions list (``/v1/chargers/{id}/sessions`` or ``/v1/sessions``),
    following ``next_cursor`` through every page."""
    items: list[dict[str, Any]] = []
    query = dict(params or {})
    with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=30) as http:
        for _ in range(10_000):
            r = http.get(path, params=query)
            assert r.status_code == 200, f"{path} {query}: {r.status_code} {r.text[:500]}"
            body = r.json()
            items.extend(body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                return items
            query = {**query, "cursor": cursor}
    raise AssertionError(f"{path}: more than 10,000 pages")


def api_sessions_csv(api: str, key: str, params: Mapping[str, str]) -> list[dict[str, str]]:
    """``/v1/sessions?format=csv`` as rows (header row -> keys)."""
    r = httpx.get(
        f"{api}/v1/sessions",
        params={**params, "format": "csv"},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
    assert r.headers["content-type"].startswith("text/csv"), r.headers["content-type"]
    return list(csv.DictReader(io.StringIO(r.text)))


def stored_sessions(influx_url: str, database: str) -> list[dict[str, Any]]:
    """Every point of ``keep.sessions`` (superseded ones included), tags and fields as keys,
    ``time`` in ns."""
    q = f'SELECT * FROM "{KEEP_RP}"."{SESSION_MEASUREMENT}"'
    r = httpx.get(
        f"{influx_url}/query",
        params={"db": database, "q": q, "epoch": "ns"},
        timeout=30,
    )
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    out = []
    for s in result.get("series") or []:
        for row in s["values"]:
            out.append({k: v for k, v in zip(s["columns"], row, strict=True) if v is not None})
    return out


def raw_readings(influx_url: str, database: str, where: str = "") -> list[dict[str, Any]]:
    """Every stored reading (``SELECT *``), tags and fields as keys, ``time`` in ns."""
    q = "SELECT * FROM readings" + (f" WHERE {where}" if where else "")
    r = httpx.get(
        f"{influx_url}/query",
        params={"db": database, "q": q, "epoch": "ns"},
        timeout=60,
    )
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    out = []
    for s in result.get("series") or []:
        for row in s["values"]:
            out.append({k: v for k, v in zip(s["columns"], row, strict=True) if v is not None})
    return out


# --- the reference implementation ----------------------------------------------------------


def rfc3339_ms(ns: int) -> str:
    """A time in ns as the API writes it (RFC 3339 UTC, milliseconds, ``Z``)."""
    t = datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns // 1_000_000 % 1000:03d}Z"


@dataclass(frozen=True)
class Rules:
    """What the rules depend on besides the readings: ``SILENCE`` and the clock."""

    silence_s: float
    now_ns: int


def reference_sessions(readings: list[dict[str, Any]], rules: Rules) -> list[dict[str, Any]]:
    """The sessions of ``readings`` (rows of :func:`raw_readings`) by the rules of
    docs/design.md#sessions, one straightforward loop per rule, in the API's shape."""
    by_session: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_connector: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in readings:
        by_connector[(r["charger_id"], r["evse_id"], r["connector_id"])].append(r)
        if "transaction_id" in r:
            by_session[(r["charger_id"], r["transaction_id"])].append(r)

    out = []
    for (charger, tx), rows in by_session.items():
        rows = sorted(rows, key=lambda r: r["time"])
        first, newest = rows[0], rows[-1]
        started = next((r for r in rows if r.get("tx_event") == "started"), None)
        ended = next((r for r in rows if r.get("tx_event") == "ended"), None)
        with_energy = [r for r in rows if "energy_wh" in r]

        start_row = started if started is not None else first
        started_at = start_row["time"]
        if "energy_wh" in start_row:
            meter_start = start_row["energy_wh"]
        else:
            meter_start = with_energy[0]["energy_wh"] if with_energy else None

        connector = (charger, first["evse_id"], first["connector_id"])
        newer_other = [
            r
            for r in by_connector[connector]
            if r["time"] > newest["time"] and r.get("transaction_id") != tx
        ]
        if ended is not None:
            state, cause, ended_at = "ended", "stop", ended["time"]
        elif newer_other:
            state, cause, ended_at = "ended", "next", newest["time"]
        elif rules.now_ns - newest["time"] >= rules.silence_s * 1e9:
            state, cause, ended_at = "ended", "silence", newest["time"]
        else:
            state, cause, ended_at = "active", "", None

        if ended is not None and "energy_wh" in ended:
            meter_stop = ended["energy_wh"]
        else:
            meter_stop = with_energy[-1]["energy_wh"] if with_energy else None

        powers = [r["power_w"] for r in rows if "power_w" in r]
        flags = []
        energies = [r["energy_wh"] for r in with_energy]
        if any(b < a for a, b in itertools.pairwise(energies)):
            flags.append("register_backwards")
        if any("energy_suspect" in r for r in rows):
            flags.append("energy_suspect")
        if not with_energy:
            flags.append("no_energy")
        if len({(r["evse_id"], r["connector_id"]) for r in rows}) > 1:
            flags.append("connector_changed")

        end_for_duration = ended_at if ended_at is not None else newest["time"]
        out.append({
            "charger_id": charger,
            "gateway_id": first["gateway_id"],
            "evse_id": int(first["evse_id"]),
            "connector_id": int(first["connector_id"]),
            "transaction_id": tx,
            "state": state,
            "started_at": rfc3339_ms(started_at),
            "ended_at": None if ended_at is None else rfc3339_ms(ended_at),
            "end_cause": cause,
            "meter_start_wh": meter_start,
            "meter_stop_wh": meter_stop,
            "energy_wh": (
                None
                if meter_start is None or meter_stop is None
                else decimal_difference(meter_start, meter_stop)
            ),
            "max_power_w": max(powers) if powers else None,
            "duration_s": (end_for_duration - started_at) / 1e9,
            "stop_reason": (ended or {}).get("stop_reason", ""),
            "id_tag_hash": next((r["id_tag_hash"] for r in rows if "id_tag_hash" in r), ""),
            "readings": len(rows),
            "flags": sorted(flags),
        })  # fmt: skip
    return out


def decimal_difference(start_wh: float, stop_wh: float) -> float:
    """The energy between two registers as a billing system counts it: the difference of the
    numbers the meter sent (their shortest decimal forms), 240.2 Wh for 1204178.9 and
    1204419.1, not the binary 240.20000000018626 (as the job computes it since accf345)."""
    return float(Decimal(repr(stop_wh)) - Decimal(repr(start_wh)))


def comparable(session: Mapping[str, Any]) -> dict[str, Any]:
    """A session reduced to :data:`SESSION_KEYS`, flags sorted and ``duration_s`` to the ms
    (both sides compute it from millisecond times; floats may differ in the last bit)."""
    out = {k: session.get(k) for k in SESSION_KEYS}
    out["flags"] = sorted(out["flags"] or [])
    if out["duration_s"] is not None:
        out["duration_s"] = round(float(out["duration_s"]), 3)
    for k in ("stop_reason", "id_tag_hash", "end_cause"):
        out[k] = out[k] or ""
    return out


def keyed(sessions: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Sessions by (charger, transaction), each :func:`comparable`; a key twice fails."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in sessions:
        key = (s["charger_id"], s["transaction_id"])
        assert key not in out, f"session {key} listed twice: {out[key]} and {s}"
        out[key] = comparable(s)
    return out


def differences(
    got: dict[tuple[str, str], dict[str, Any]], want: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """What differs between two :func:`keyed` sets, one line per difference (at most 20)."""
    lines = [f"missing {k}: {want[k]}" for k in sorted(want.keys() - got.keys())]
    lines += [f"unexpected {k}: {got[k]}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        for field, value in want[k].items():
            if got[k][field] != value:
                lines.append(f"{k} {field}: got {got[k][field]!r}, reference {value!r}")
    return lines[:20] + ([f"... {len(lines) - 20} more"] if len(lines) > 20 else [])
