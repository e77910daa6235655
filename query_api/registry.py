"""The charger registry as the API reads it (docs/design.md#charger-registry): each charger's
identity (vendor, model, serial, firmware) from its newest ``keep.chargers`` point.

A page of chargers costs one query (per :data:`BATCH` chargers of it), never one per charger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL

#: The identity keys of a charger document (null when the charger never said).
IDENTITY: Final = ("vendor", "model", "serial", "firmware")
#: Most chargers one query names (it travels in the URL of a GET: ~100 bytes per charger).
BATCH: Final = 1000

Identity = dict[str, str | None]


def unknown() -> Identity:
    """The identity of a charger without a registry point."""
    return dict.fromkeys(("gateway_id", *IDENTITY))


async def identities(influx: InfluxQL, charger_ids: Sequence[str]) -> dict[str, Identity]:
    """Per charger of ``charger_ids`` with a registry point: ``gateway_id`` and the identity
    keys of its newest point (null where that point gave none)."""
    ids = list(dict.fromkeys(charger_ids))
    if not ids:
        return {}
    chunks = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
    answers = await asyncio.gather(
        *(influx.query(influxql.registry_query(chunk)) for chunk in chunks)
    )
    out: dict[str, Identity] = {}
    for series in answers:
        for s in series:
            charger = s.tags.get("charger_id")
            rows = s.rows()
            if not charger or not rows:
                continue
            row = rows[0]
            out[charger] = {
                k: v if isinstance(v := row.get(k), str) and v else None
                for k in ("gateway_id", *IDENTITY)
            }
    return out
