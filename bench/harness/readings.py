"""The readings the benchmarks send: ReadingBatch payloads for MQTT, and the same points as line
protocol for writing straight to InfluxDB (the schema of ``processor/lineproto.py``, checked
against it by :func:`check_line`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import orjson

from processor.lineproto import to_lines
from telemetry_common.schema import SCHEMA_ID, Reading

#: Values of every reading (the fields of the schema; energy and power vary per point).
VALUES: Final = {
    "energy_wh": 0.0,
    "power_w": 7200.0,
    "current_a": 31.8,
    "voltage_v": 229.5,
    "soc_pct": 64.0,
    "temperature_c": 41.5,
    "frequency_hz": 50.0,
    "current_l1_a": 31.8,
}

#: The line protocol of a point after ``energy_wh`` and ``power_w``, up to the value of ``seq``.
LINE_TAIL: Final = (
    "current_a=31.8,voltage_v=229.5,soc_pct=64.0,temperature_c=41.5,frequency_hz=50.0,"
    'current_l1_a=31.8,status="Charging",seq='
)


def reading(
    charger_id: str, seq: int, ts: str, energy_wh: float, tx: dict[str, str] | None = None
) -> dict[str, object]:
    """One reading of connector 1 of EVSE 1, charging; ``tx``: its transaction keys
    (:func:`transaction`)."""
    out: dict[str, object] = {
        "charger_id": charger_id,
        "evse_id": 1,
        "connector_id": 1,
        "seq": seq,
        "ts": ts,
        "status": "Charging",
    }
    if tx:
        out.update(tx)
    out["values"] = dict(VALUES, energy_wh=energy_wh)
    return out


def transaction(k: int, length: int) -> dict[str, str]:
    """The transaction keys of a charger's ``k``-th reading when every ``length`` readings are
    one session (docs/design.md#readingbatch): ``transaction_id`` on each, the first one
    ``started`` with the id tag's hash, the last ``ended`` with a stop reason."""
    n, i = divmod(k, length)
    tx = {"transaction_id": f"tx{n}"}
    if i == 0:
        tx |= {"tx_event": "started", "id_tag_hash": f"{n % 4093:032x}"}
    elif i == length - 1:
        tx |= {"tx_event": "ended", "stop_reason": "EVDisconnected"}
    return tx


def batch_payload(gateway_id: str, readings: list[dict[str, object]]) -> bytes:
    """A ReadingBatch as published on the gateway's readings topic."""
    return orjson.dumps({"schema": SCHEMA_ID, "gateway_id": gateway_id, "readings": readings})


def series(gateway_id: str, charger_id: str) -> str:
    """The measurement and tags of a charger's points, up to the space before the fields."""
    return f"readings,charger_id={charger_id},connector_id=1,evse_id=1,gateway_id={gateway_id} "


def line(gateway_id: str, charger_id: str, energy: str, power: str, seq: int, ns: int) -> str:
    """One point as line protocol; ``energy`` and ``power`` are already formatted."""
    return (
        f"{series(gateway_id, charger_id)}energy_wh={energy},power_w={power},{LINE_TAIL}{seq}i {ns}"
    )


def check_line(gateway_id: str, charger_id: str) -> None:
    """Fail early if the fast builders ever drift from the processor's line protocol."""
    values = dict(VALUES, energy_wh=120.0, power_w=7000.0)
    r = Reading.model_validate(
        {
            "charger_id": charger_id,
            "evse_id": 1,
            "connector_id": 1,
            "seq": 7,
            "ts": datetime(2026, 5, 1, tzinfo=UTC),
            "status": "Charging",
            "values": values,
        }
    )
    ns = 1_777_593_600_000_000_000
    ours = line(gateway_id, charger_id, "120.0", "7000.0", 7, ns)
    theirs = to_lines(gateway_id, [dict(r)], [ns])[0]
    if ours != theirs:
        raise RuntimeError(
            f"bench line protocol differs from processor.lineproto:\n{ours}\n{theirs}"
        )
