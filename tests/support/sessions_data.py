"""Session and charger-registry points for the API's tests, written straight to InfluxDB as the
contract defines them (docs/design.md#sessions, #charger-registry): ``keep.sessions`` points as
the sessions job writes them, ``keep.chargers`` points as the bridge writes them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTS = ("readings", "first_seq", "last_seq")
_FLOATS = ("meter_start_wh", "meter_stop_wh", "energy_wh", "max_power_w", "duration_s")
_STRINGS = ("transaction_id", "state", "end_cause", "stop_reason", "id_tag_hash", "flags")


def ns(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1) * 1000


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def session(
    charger_id: str,
    transaction_id: str,
    started_at: datetime,
    *,
    gateway_id: str = "gw-1",
    evse_id: int = 1,
    connector_id: int = 1,
    ended_at: datetime | None = None,
    meter_start_wh: float = 1000.0,
    energy_wh: float = 5000.0,
    max_power_w: float | None = 7400.0,
    state: str | None = None,
    end_cause: str | None = None,
    stop_reason: str = "",
    id_tag_hash: str = "",
    readings: int = 10,
    flags: str = "",
) -> dict[str, Any]:
    """A session as the job computes it (active when ``ended_at`` is None)."""
    last = ended_at or started_at + timedelta(minutes=10)
    return {
        "charger_id": charger_id,
        "gateway_id": gateway_id,
        "evse_id": evse_id,
        "connector_id": connector_id,
        "transaction_id": transaction_id,
        "state": state or ("active" if ended_at is None else "ended"),
        "end_cause": end_cause if end_cause is not None else ("" if ended_at is None else "stop"),
        "started_at": started_at,
        "ended_at": ended_at,
        "meter_start_wh": meter_start_wh,
        "meter_stop_wh": meter_start_wh + energy_wh,
        "energy_wh": energy_wh,
        "max_power_w": max_power_w,
        "duration_s": (last - started_at).total_seconds(),
        "stop_reason": stop_reason,
        "id_tag_hash": id_tag_hash,
        "readings": readings,
        "flags": flags,
        "first_seq": 1,
        "last_seq": readings,
        "last_reading_at": last,
        "computed_at": last + timedelta(seconds=30),
    }


def session_line(s: dict[str, Any]) -> str:
    """One ``sessions`` point (time = started_at); fields exactly per the contract."""
    tags = (
        f"charger_id={s['charger_id']},connector_id={s['connector_id']},"
        f"evse_id={s['evse_id']},gateway_id={s['gateway_id']}"
    )
    fields = [f"{k}={_quoted(s[k])}" for k in _STRINGS]
    fields += [f"{k}={float(s[k])!r}" for k in _FLOATS if s.get(k) is not None]
    fields += [f"{k}={int(s[k])}i" for k in _INTS]
    fields.append(f"last_reading_at={ns(s['last_reading_at'])}i")
    fields.append(f"computed_at={ns(s['computed_at'])}i")
    if s["ended_at"] is not None:
        fields.append(f"ended_at={ns(s['ended_at'])}i")
    return f"sessions,{tags} {','.join(fields)} {ns(s['started_at'])}"


def charger_line(charger_id: str, ts: datetime, gateway_id: str, **info: str) -> str:
    """One ``chargers`` (registry) point: the identity keys given."""
    fields = [f"gateway_id={_quoted(gateway_id)}"]
    fields += [f"{k}={_quoted(v)}" for k, v in sorted(info.items())]
    return f"chargers,charger_id={charger_id} {','.join(fields)} {ns(ts)}"


def create_keep(url: str, database: str) -> None:
    """The retention policy ``keep`` (INF), as the services create it."""
    q = f'CREATE RETENTION POLICY "keep" ON "{database}" DURATION INF REPLICATION 1'
    r = httpx.post(f"{url}/query", data={"q": q}, timeout=10)
    r.raise_for_status()
    assert '"error"' not in r.text, r.text


def write_keep(url: str, database: str, lines: Iterable[str], batch: int = 5000) -> None:
    """``lines`` into retention policy ``keep``."""
    text = list(lines)
    for i in range(0, len(text), batch):
        r = httpx.post(
            f"{url}/write",
            params={"db": database, "rp": "keep", "precision": "ns"},
            content="\n".join(text[i : i + batch]).encode(),
            timeout=60,
        )
        assert r.status_code == 204, r.text
