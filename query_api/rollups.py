"""The value keys a rollup measurement holds, asked of InfluxDB and reused for a while.

A history or stats query over rollups names its fields (InfluxDB cannot weigh ``{key}_mean`` by
``count`` under a wildcard); without ``fields`` the rollup's value keys are asked with one
``SHOW FIELD KEYS``, kept ``ttl_s`` (keys are added as chargers send new ones, never renamed).
"""

from __future__ import annotations

from telemetry_common import influxql
from telemetry_common.influx_query import InfluxQL
from telemetry_common.influxql import Rollup


class RollupFields:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._held: dict[str, tuple[float, list[str]]] = {}

    async def get(self, influx: InfluxQL, rollup: Rollup, mono: float) -> list[str]:
        """The value keys of ``rollup`` (sorted; empty when it holds none yet)."""
        held = self._held.get(rollup)
        if held is not None and mono - held[0] < self.ttl_s:
            return held[1]
        series = await influx.query(influxql.rollup_fields_query(rollup))
        keys = influxql.rollup_value_keys(row.get("fieldKey") for s in series for row in s.rows())
        self._held[rollup] = (mono, keys)
        return keys
