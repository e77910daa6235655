"""Charger bindings as both the bridges and the API read them (docs/bridge.md#charger-bindings):
the bindings file, the rows of the bindings store, and a store that does not exist yet.

The store is InfluxDB measurement ``bindings`` in retention policy ``keep``; an answer of
:func:`telemetry_common.influxql.bindings_query` holds one row per charger named (its newest
change: ``gateway_id``, ``""`` = unbound, ``previous``, ``changed_by``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from telemetry_common.errors import ConfigError
from telemetry_common.ids import check_id
from telemetry_common.influx_query import InfluxError, Series


def read_bindings_file(path: Path, setting: str = "BINDINGS_FILE") -> dict[str, str]:
    """The pairs of a bindings file, JSON ``{"charger_id": "gateway_id"}``. A file that cannot
    work raises ``ConfigError`` naming ``setting``."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(setting, f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(setting, f"{path}: need {{charger: gateway}}")
    try:
        return {check_id("charger id", c): check_id("gateway id", g) for c, g in raw.items()}
    except ValueError as exc:
        raise ConfigError(setting, f"{path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StoredChange:
    """A charger's newest change in the bindings store (``gateway_id`` ``""``: unbound)."""

    charger_id: str
    gateway_id: str
    ns: int | None
    previous: str | None
    changed_by: str | None


def store_changes(series: list[Series]) -> dict[str, StoredChange]:
    """Each charger's newest binding change in an answer of ``bindings_query``."""
    found: dict[str, StoredChange] = {}
    for s in series:
        charger = s.tags.get("charger_id")
        for row in s.rows() if charger else []:
            gateway = row.get("gateway_id")
            ns = row.get("time")
            found[str(charger)] = StoredChange(
                charger_id=str(charger),
                gateway_id=gateway if isinstance(gateway, str) else "",
                ns=int(ns) if isinstance(ns, int | float) else None,
                previous=_text(row.get("previous")),
                changed_by=_text(row.get("changed_by")),
            )
    return found


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def no_store_yet(exc: InfluxError) -> bool:
    """The store's retention policy does not exist: nothing was ever bound (an empty store)."""
    return "retention policy not found" in str(exc)
