"""The InfluxDB schema of docs/design.md, named once for the processor (writer) and the API."""

from __future__ import annotations

from typing import Final

DATABASE: Final = "telemetry"
MEASUREMENT: Final = "readings"
#: Dead letters, stored before they are acknowledged (docs/design.md#dead-letters): tags
#: gateway_id and reason; fields detail, topic, index, payload_bytes, payload_b64 (bounded).
DEADLETTER_MEASUREMENT: Final = "deadletters"
#: Bounded ids only: never a tag for transaction or message ids (unbounded cardinality).
TAG_KEYS: Final = ("charger_id", "gateway_id", "evse_id", "connector_id")
#: Fields stored beside the reading's values (``epoch`` only for a batch that carries one).
META_FIELDS: Final = ("status", "seq", "epoch")
#: Value keys that would collide with a tag, a meta field or InfluxDB's own ``time`` column.
RESERVED_VALUE_KEYS: Final = frozenset({"time", *TAG_KEYS, *META_FIELDS})
#: The raw readings' retention policy (the database's default); the rollup job sets its duration.
RAW_RP: Final = "autogen"
#: Rollups (docs/design.md#rollups): retention policy -> measurement. Tags as the raw readings;
#: time = bucket start; fields ``{key}_mean _min _max _last`` per value key, ``count`` (integer),
#: ``status_last`` (string).
ROLLUP_1M_RP: Final = "rollup_1m"
ROLLUP_1M_MEASUREMENT: Final = "readings_1m"
ROLLUP_1H_RP: Final = "rollup_1h"
ROLLUP_1H_MEASUREMENT: Final = "readings_1h"
#: The rollup job's progress (in retention policy ``rollup_1h``): field ``done_until_ns``.
ROLLUP_STATE_MEASUREMENT: Final = "rollup_state"
