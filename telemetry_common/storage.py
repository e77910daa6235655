"""The InfluxDB schema of docs/design.md, named once for the processor (writer) and the API."""

from __future__ import annotations

from typing import Final

DATABASE: Final = "telemetry"
MEASUREMENT: Final = "readings"
#: Dead letters, stored before they are acknowledged (docs/design.md#dead-letters): tags
#: gateway_id and reason; fields detail, topic, index, payload_bytes, payload_b64 (bounded).
DEADLETTER_MEASUREMENT: Final = "deadletters"
#: Charger bindings an operator set through the API (docs/bridge.md#charger-bindings): one point
#: per change in retention policy ``KEEP_RP``; tag charger_id; fields gateway_id ("" = unbound),
#: previous, changed_by.
BINDINGS_MEASUREMENT: Final = "bindings"
#: The retention policy of what must outlive raw readings (duration INF; on the v2 API, the
#: bucket ``{bucket}_keep``).
KEEP_RP: Final = "keep"
#: The newest-stored state (docs/design.md#newest-stored-state), in retention policy ``KEEP_RP``,
#: written by each bridge with every batch it commits, before the batch is acknowledged, for what
#: the batch advanced. ONE point per series, at time ``NEWEST_STATE_TS`` (a write overwrites it),
#: so reading the whole state costs chargers (or gateway epochs) x bridges, not history. Several
#: bridges commit the same charger's batches interleaved: each keeps its own series (tag
#: ``bridge``, its public name as in ``seqgaps``) and readers take the newest over bridges.
#: Per charger: tags bridge, charger_id; fields ts (ns), seq (integer), gateway_id (string).
NEWEST_CHARGER_MEASUREMENT: Final = "newest_chargers"
#: Per gateway epoch: tags bridge, gateway_id, epoch (absent: a gateway without epochs); fields
#: newest_ts (ns of the newest reading by time), high (the highest seq), high_ts (its ts, ns).
NEWEST_GATEWAY_MEASUREMENT: Final = "newest_gateways"
#: The timestamp of every newest-state point (1970-01-01: one shard group in ``KEEP_RP``).
NEWEST_STATE_TS: Final = 0
#: Alarms (docs/alarms.md): one point per occurrence, time = when it was raised; tags kind,
#: subject; fields id, severity, detail, active (bool) and, once cleared, cleared_at (ns).
ALARM_MEASUREMENT: Final = "alarms"
#: Seq gaps the processor confirmed (docs/alarms.md#in-influxdb): tags gateway_id, bridge
#: (its public name); fields missing (readings in no store), gaps, first, last, epoch.
SEQGAP_MEASUREMENT: Final = "seqgaps"
#: While a gateway has confirmed gaps, a bridge writes its ``seqgaps`` point again this often...
SEQGAP_REFRESH_S: Final = 600.0
#: ... and the API reads them back over this window: a bridge that stopped (or forgot its gaps
#: in a restart) no longer asserts them once its newest point is older.
SEQGAP_WINDOW_S: Final = 3 * SEQGAP_REFRESH_S
#: Bounded ids only: never a tag for transaction or message ids (unbounded cardinality).
TAG_KEYS: Final = ("charger_id", "gateway_id", "evse_id", "connector_id")
#: Fields stored beside the reading's values (``epoch`` only for a batch that carries one; the
#: transaction fields only when the reading carries them: docs/design.md#influxdb).
META_FIELDS: Final = (
    "status",
    "seq",
    "epoch",
    "transaction_id",
    "tx_event",
    "stop_reason",
    "id_tag_hash",
)
#: Value keys that would collide with a tag, a meta field or InfluxDB's own ``time`` column.
RESERVED_VALUE_KEYS: Final = frozenset({"time", *TAG_KEYS, *META_FIELDS})
#: The raw readings' retention policy (the database's default); the rollup job sets its duration.
RAW_RP: Final = "autogen"
#: What chargers say about themselves (docs/design.md#charger-registry): one point per reading
#: that carried ``charger_info``, in retention policy ``KEEP_RP``, written by the bridge before
#: the reading is acknowledged; tag charger_id; fields gateway_id, vendor, model, serial,
#: firmware (strings, those given); time = the reading's ts.
CHARGER_MEASUREMENT: Final = "chargers"
#: Charging sessions (docs/design.md#sessions), written by the sessions job in ``KEEP_RP``: tags
#: as the readings; time = started_at; one point per (charger, transaction).
SESSION_MEASUREMENT: Final = "sessions"
#: The sessions job's progress (in ``KEEP_RP``): fields ``scanned_until_ns``, ``marks_until_ns``.
SESSION_STATE_MEASUREMENT: Final = "session_state"
#: Rollups (docs/design.md#rollups): retention policy -> measurement. Tags as the raw readings;
#: time = bucket start; fields ``{key}_mean _min _max _last`` and ``{key}_count`` (integer: the
#: readings that carried the key) per value key, ``count`` (integer), ``status_last`` (string).
ROLLUP_1M_RP: Final = "rollup_1m"
ROLLUP_1M_MEASUREMENT: Final = "readings_1m"
ROLLUP_1H_RP: Final = "rollup_1h"
ROLLUP_1H_MEASUREMENT: Final = "readings_1h"
#: The rollup job's progress (in retention policy ``rollup_1h``): field ``done_until_ns``.
ROLLUP_STATE_MEASUREMENT: Final = "rollup_state"
#: Late readings (docs/design.md#rollups): when a bridge stores readings older than
#: ``LATE_AFTER_S``, it writes one point per gateway and batch: tags bridge, gateway_id; fields
#: first, last (the late readings' oldest and newest ts, ns). The rollup job recomputes those
#: ranges, so a backlog drained or a dead letter replayed days later reaches the rollups. Newer
#: readings are covered by the job's ``LOOKBACK``, which must be at least this long.
ROLLUP_LATE_MEASUREMENT: Final = "rollup_late"
LATE_AFTER_S: Final = 3600
