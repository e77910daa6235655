"""The charger registry (docs/design.md#charger-registry): what a charger says about itself
(``charger_info``: vendor, model, serial, firmware, from OCPP's BootNotification) is kept in
retention policy ``keep``, one point per reading that carried it, so it outlives the raw
readings (a charger may run for years between two boots)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from telemetry_common.influx_write import field_str
from telemetry_common.schema import ReadingRow
from telemetry_common.storage import CHARGER_MEASUREMENT

INFO_KEYS = ("vendor", "model", "serial", "firmware")


def registry_lines(gateway_id: str, rows: Sequence[ReadingRow], nss: Iterable[int]) -> list[str]:
    """A ``chargers`` point for each of ``rows`` that carries ``charger_info`` (ids are
    allow-listed: the tag needs no escaping; the texts are printable ASCII, quoted)."""
    out = []
    for row, ns in zip(rows, nss, strict=True):
        info = row.get("charger_info")
        if not info:
            continue
        fields = [f"gateway_id={field_str(gateway_id)}"]
        fields += [f"{k}={field_str(info[k])}" for k in INFO_KEYS if info.get(k) is not None]
        out.append(f"{CHARGER_MEASUREMENT},charger_id={row['charger_id']} {','.join(fields)} {ns}")
    return out
