"""The gateway fleet view's pure core: what the mirror keeps of each retained state message (new
and old heartbeats, last will), the state (online / stale / offline / unknown), certificate
urgency, and the merge with the gateways only stored readings name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from edge_agent.heartbeat import online_payload, state_payload
from edge_agent.records import OutboxStats
from query_api.gateways import cert_status, fleet, gateway_state
from query_api.latest.mirror import GatewayInfo, LiveMirror
from telemetry_common.topics import Topics

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
TOPICS = Topics("chargers/v1")


def _state(mirror: LiveMirror, gw: str, doc: dict[str, Any] | bytes) -> None:
    payload = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    assert mirror.apply(TOPICS.state(gw), payload, 0.0)


def _stats(pending: int, dropped: dict[str, int]) -> OutboxStats:
    return OutboxStats(
        pending=pending, pending_bytes=0, parked=0, oldest_seq=1, newest_seq=pending,
        oldest_age_s=30.0, last_seq_assigned=pending, dropped=dropped,
    )  # fmt: skip


def test_the_mirror_keeps_what_the_heartbeat_says_and_the_last_will_keeps_it() -> None:
    """A heartbeat made by the agent's own code: version, interval, depth, unconfirmed, drops
    and certificate are kept; ``since`` is the first online message's ts and does not move with
    later heartbeats; the last will moves the state and ``since`` (not before the last
    heartbeat) but keeps the last known outbox and version."""
    mirror = LiveMirror(TOPICS)
    not_after = NOW + timedelta(days=30)
    beat = online_payload(
        now=NOW, version="1.2.3", outbox=_stats(7, {"budget_energy": 2}), unconfirmed=3,
        not_after=not_after, interval_s=15.0,
    )  # fmt: skip
    _state(mirror, "gw-1", beat)
    later = online_payload(now=NOW + timedelta(seconds=15), version="1.2.3", interval_s=15.0)
    _state(mirror, "gw-1", later)
    info = mirror.gateway_info()["gw-1"]
    assert (info.state, info.since, info.ts) == ("online", NOW, NOW + timedelta(seconds=15))
    assert (info.agent_version, info.interval_s) == ("1.2.3", 15.0)
    assert (info.depth, info.unconfirmed, info.drops) == (0, 0, {})
    _state(mirror, "gw-1", beat)
    info = mirror.gateway_info()["gw-1"]
    assert (info.depth, info.unconfirmed, info.drops) == (7, 3, {"budget_energy": 2})
    assert info.cert_not_after == not_after

    # The last will carries the time of the connect it was registered at: since is no earlier
    # than the last heartbeat.
    connected = NOW - timedelta(hours=1)
    _state(mirror, "gw-1", state_payload("offline", now=connected))
    info = mirror.gateway_info()["gw-1"]
    assert (info.state, info.since, info.ts, info.last_online) == ("offline", NOW, connected, NOW)
    bye = NOW + timedelta(minutes=1)  # a clean stop says when
    _state(mirror, "gw-2", online_payload(now=NOW))
    _state(mirror, "gw-2", state_payload("offline", now=bye))
    assert mirror.gateway_info()["gw-2"].since == bye
    assert (info.agent_version, info.depth, info.drops) == ("1.2.3", 7, {"budget_energy": 2})
    assert not info.outbox_reported


def test_an_old_heartbeat_without_drops_or_interval_is_read() -> None:
    """A heartbeat of an agent before drops and interval_s: read, with drops and interval
    unknown (None), not zero; junk values are ignored, not kept."""
    mirror = LiveMirror(TOPICS)
    _state(mirror, "gw-old", {
        "state": "online", "ts": NOW.isoformat(), "agent_version": "0.8.0",
        "outbox": {"depth": 4, "oldest_unsent_ts": None, "unconfirmed": 0},
        "cert_not_after": None,
    })  # fmt: skip
    info = mirror.gateway_info()["gw-old"]
    assert (info.depth, info.drops, info.interval_s) == (4, None, None)
    _state(mirror, "gw-odd", {
        "state": "online", "ts": NOW.isoformat(), "agent_version": 7, "interval_s": -1,
        "outbox": {"depth": "many", "unconfirmed": True, "drops": {"a": -1, "b": 2}},
    })  # fmt: skip
    odd = mirror.gateway_info()["gw-odd"]
    assert (odd.agent_version, odd.interval_s) == (None, None)
    assert (odd.depth, odd.unconfirmed, odd.drops) == (None, None, {"b": 2})


def test_online_turns_stale_after_three_announced_intervals_on_the_bridges_clock() -> None:
    """Online while the newest heartbeat is at most 3 intervals old (the announced one, else
    60 s); the gateway's reported clock offset corrects the age; offline stays offline
    whatever the age; no retained state: unknown."""

    def online(age_s: float, **kw: Any) -> GatewayInfo:
        ts = NOW - timedelta(seconds=age_s)
        return GatewayInfo("online", ts, last_online=ts, **kw)

    info = online(44, interval_s=15.0)
    assert gateway_state(info, NOW) == ("online", 44.0)
    info = online(46, interval_s=15.0)
    assert gateway_state(info, NOW) == ("stale", 46.0)
    info.clock_offset_s = -5.0  # the gateway's clock is 5 s behind: its ts looks 5 s older
    assert gateway_state(info, NOW) == ("online", 41.0)
    assert gateway_state(online(170), NOW)[0] == "online"
    assert gateway_state(online(190), NOW)[0] == "stale"
    assert gateway_state(GatewayInfo("offline", NOW - timedelta(days=9)), NOW) == ("offline", None)
    assert gateway_state(None, NOW) == ("unknown", None)


def test_certificate_urgency_follows_the_alarm_thresholds() -> None:
    """Days left, and ok / warning (within warn_days) / critical / expired."""

    def status(days: float) -> str | None:
        return cert_status(NOW + timedelta(days=days), NOW, warn_days=14, critical_days=2)[1]

    assert [status(d) for d in (30, 13.9, 1.5, -0.1)] == ["ok", "warning", "critical", "expired"]
    assert cert_status(None, NOW, warn_days=14, critical_days=2) == (None, None)
    assert cert_status(NOW + timedelta(days=3), NOW, warn_days=14, critical_days=2)[0] == 3.0


def test_the_fleet_lists_stored_only_gateways_as_unknown_with_their_chargers() -> None:
    """Gateways with a retained state and those only chargers name, sorted; each with its
    chargers (sorted); a charger without a gateway is no gateway's."""
    infos = {"gw-b": GatewayInfo("offline", NOW), "gw-c": GatewayInfo("online", NOW)}
    chargers = [("cp-2", "gw-a"), ("cp-1", "gw-a"), ("cp-3", "gw-b"), ("cp-4", None)]
    views = fleet(infos, chargers, NOW, warn_days=14, critical_days=2)
    assert [(v.gateway_id, v.state, v.charger_ids) for v in views] == [
        ("gw-a", "unknown", ["cp-1", "cp-2"]),
        ("gw-b", "offline", ["cp-3"]),
        ("gw-c", "online", []),
    ]
