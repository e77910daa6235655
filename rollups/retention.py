"""The retention policies of the raw readings and the rollups (InfluxDB 1.x InfluxQL).

``ensure_rollup_policies`` creates ``rollup_1m`` and ``rollup_1h`` (or alters them to the
settings) at start; ``apply_raw_retention`` sets the duration of ``autogen``, called only after
a pass has rolled up everything there is (so the first deployment on a database with old
readings rolls them up before InfluxDB drops them). Idempotent: a policy already as configured
is left alone. On InfluxDB 2.x/3.x (``INFLUX__API=v2``) or with ``MANAGE_RETENTION=false``,
nothing is changed: :func:`operator_instructions` says what to create.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from rollups.settings import RollupsSettings, to_timedelta
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influxql import retention_policy_statement, show_retention_policies_query
from telemetry_common.retention import go_duration
from telemetry_common.storage import RAW_RP, ROLLUP_1H_RP, ROLLUP_1M_RP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    name: str
    duration: str
    shard: str


def rollup_policies(s: RollupsSettings) -> tuple[Policy, Policy]:
    return (
        Policy(ROLLUP_1M_RP, s.rollup_1m_retention, s.rollup_1m_shard_duration),
        Policy(ROLLUP_1H_RP, s.rollup_1h_retention, s.rollup_1h_shard_duration),
    )


def raw_policy(s: RollupsSettings) -> Policy:
    return Policy(RAW_RP, s.raw_retention, s.raw_shard_duration)


def managed(s: RollupsSettings) -> bool:
    return s.manage_retention and s.influx.api == "v1"


def operator_instructions(s: RollupsSettings) -> str:
    """What an operator creates by hand where the job does not (InfluxDB 2.x/3.x)."""
    bucket = s.influx.bucket or s.influx.database
    raw, (m1, h1) = raw_policy(s), rollup_policies(s)
    return (
        f"retention is not managed by the job here: set the retention of bucket {bucket!r} "
        f"to {raw.duration}; create bucket '{bucket}_{m1.name}' (retention {m1.duration}) and "
        f"'{bucket}_{h1.name}' (retention {h1.duration}), each mapped for InfluxQL as database "
        f"{s.influx.database!r}, retention policy {m1.name!r} / {h1.name!r} "
        "(`influx v1 dbrp create`); see docs/deploy.md#retention-and-rollups"
    )


async def _current(client: InfluxQLClient, database: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for series in await client.query(show_retention_policies_query(database)):
        for row in series.rows():
            out[str(row["name"])] = (str(row["duration"]), str(row["shardGroupDuration"]))
    return out


async def _ensure(
    client: InfluxQLClient, database: str, policy: Policy, current: dict[str, tuple[str, str]]
) -> None:
    have = current.get(policy.name)
    verb: Literal["CREATE", "ALTER"]
    if have is None:
        verb = "CREATE"
    elif (go_duration(have[0]), go_duration(have[1])) != (
        to_timedelta(policy.duration),
        to_timedelta(policy.shard),
    ):
        verb = "ALTER"
    else:
        return
    await client.execute(
        retention_policy_statement(verb, database, policy.name, policy.duration, policy.shard)
    )
    log.info(
        "retention policy %s %s: duration %s, shard groups %s",
        policy.name,
        "created" if verb == "CREATE" else f"altered (was {have[0] if have else ''})",
        policy.duration,
        policy.shard,
    )


async def ensure_rollup_policies(client: InfluxQLClient, s: RollupsSettings) -> None:
    """Create or alter ``rollup_1m`` and ``rollup_1h`` to the settings."""
    current = await _current(client, s.influx.database)
    for policy in rollup_policies(s):
        await _ensure(client, s.influx.database, policy, current)


async def apply_raw_retention(client: InfluxQLClient, s: RollupsSettings) -> None:
    """Set ``autogen``'s duration (and shard-group duration) to the settings."""
    current = await _current(client, s.influx.database)
    await _ensure(client, s.influx.database, raw_policy(s), current)
