"""The alarm rules (pure) and an alarm's record: what fires, what is known, what clears."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from query_api.alarms.rules import (
    ChargerView,
    Inputs,
    Thresholds,
    changes,
    connector_subject,
    evaluate,
)
from query_api.alarms.store import Alarm, from_message
from query_api.latest.mirror import GatewayInfo, LiveMirror
from telemetry_common import influxql
from telemetry_common.topics import Topics

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
T = Thresholds(silent_intervals=3, silent_min_s=10, silent_unlearned_s=300)


def _online(**kw: object) -> GatewayInfo:
    return GatewayInfo("online", NOW, **kw)  # type: ignore[arg-type]


def test_a_charger_is_silent_after_n_of_its_intervals_with_a_floor() -> None:
    """3 x a learned 5 s interval = 15 s; a 1 s interval waits for the 10 s floor; an unlearned
    interval waits STATE_STALE_AFTER_S; a charger of an offline gateway is not judged."""
    chargers = [
        ChargerView("a", "gw", NOW - timedelta(seconds=16), 5.0),
        ChargerView("b", "gw", NOW - timedelta(seconds=14), 5.0),
        ChargerView("c", "gw", NOW - timedelta(seconds=9), 1.0),
        ChargerView("d", "gw", NOW - timedelta(seconds=200), None),
        ChargerView("e", "off", NOW - timedelta(hours=1), 1.0),
    ]
    gws = {"gw": _online(), "off": GatewayInfo("offline", NOW)}
    v = evaluate(Inputs(NOW, chargers, gateways=gws), T)
    silent = {s for (k, s) in v.firing if k == "charger_silent"}
    assert silent == {"a"}
    assert all(v.knows(("charger_silent", c)) for c in ("a", "b", "c", "d", "gone"))
    assert not v.knows(("charger_silent", "e"))  # held while its gateway is offline
    assert ("gateway_offline", "off") in v.firing


def test_a_silent_charger_whose_interval_is_not_learned_keeps_its_alarm() -> None:
    """After a restart the mirror holds only a charger's retained last value: silent before
    (an active alarm raised after that value), it is held, not cleared; a reading after the
    raise is news: it clears."""
    since = NOW - timedelta(seconds=30)
    chargers = [
        ChargerView("held", "gw", NOW - timedelta(seconds=100), None),
        ChargerView("back", "gw", NOW - timedelta(seconds=5), None),
    ]
    inputs = Inputs(NOW, chargers, gateways={"gw": _online()})
    inputs.silent_since = {"held": since, "back": since}
    v = evaluate(inputs, T)
    assert not any(k == "charger_silent" for (k, _) in v.firing)
    active = [("charger_silent", "held"), ("charger_silent", "back")]
    assert changes(v, active) == ({}, [("charger_silent", "back")])


def test_gateway_without_birth_is_offline_once_settled_but_not_ingest_gateways() -> None:
    chargers = [ChargerView("a", "nobirth", NOW, 1.0), ChargerView("b", "http-ingest", NOW, 1.0)]
    ingest = frozenset({"http-ingest"})
    unsettled = evaluate(Inputs(NOW, chargers, stateless=ingest, settled=False), T)
    assert not any(k == "gateway_offline" for k, _ in unsettled.firing)
    v = evaluate(Inputs(NOW, chargers, stateless=ingest), T)
    assert {s for k, s in v.firing if k == "gateway_offline"} == {"nobirth"}
    assert v.knows(("gateway_offline", "retired"))  # no state, no charger: clears
    assert not unsettled.knows(("gateway_offline", "retired"))


def test_backlog_and_certificate_from_the_state_heartbeat() -> None:
    gws = {
        "late": _online(
            outbox_reported=True,
            oldest_unsent=NOW - timedelta(minutes=20),
            cert_not_after=NOW + timedelta(days=3),
        ),
        "fine": _online(
            outbox_reported=True, oldest_unsent=None, cert_not_after=NOW + timedelta(days=300)
        ),
        "will": GatewayInfo("offline", NOW),
    }
    v = evaluate(Inputs(NOW, gateways=gws), T)
    assert set(v.firing) >= {("edge_backlog", "late"), ("certificate_expiry", "late")}
    assert ("edge_backlog", "fine") not in v.firing
    for kind in ("edge_backlog", "certificate_expiry"):
        assert v.knows((kind, "late"))
        assert v.knows((kind, "fine"))
        assert not v.knows((kind, "will"))  # the last will says nothing of them
        assert v.knows((kind, "retired"))  # settled: no retained state, nothing to alarm
    unsettled = evaluate(Inputs(NOW, gateways=gws, settled=False), T)
    assert not unsettled.knows(("edge_backlog", "retired"))
    assert not unsettled.knows(("certificate_expiry", "retired"))


def test_unknown_subjects_are_held_and_known_ones_clear() -> None:
    """A connector not heard from since a restart keeps its alarm while its charger is in the
    mirror (one of a charger gone from it clears); one seen with another status clears; seq
    gaps and dead letters cover every gateway unless their query failed."""
    active = [
        ("connector_faulted", "cp.1.1"),
        ("connector_faulted", "cp.1.2"),
        ("seq_gap_confirmed", "gw"),
        ("deadletters", "gw"),
    ]
    active.append(("connector_faulted", "retired.1.1"))
    inputs = Inputs(
        NOW,
        [ChargerView("cp", "gw", NOW, 1.0)],
        connectors={("cp", 1, 1): "Available"},
        gateways={"gw": _online()},
        seqgaps={},
        deadletters=None,
    )
    to_raise, to_clear = changes(evaluate(inputs, T), active)
    assert to_raise == {}
    assert to_clear == [
        ("connector_faulted", "cp.1.1"),
        ("connector_faulted", "retired.1.1"),
        ("seq_gap_confirmed", "gw"),
    ]
    inputs = Inputs(NOW, connectors={("cp", 1, 2): "Faulted"}, deadletters={"gw": 3})
    to_raise, to_clear = changes(evaluate(inputs, T), [])
    faulted = ("connector_faulted", connector_subject("cp", 1, 2))
    assert set(to_raise) == {faulted, ("deadletters", "gw")}


def test_an_alarm_round_trips_through_its_message_and_its_lines() -> None:
    alarm = Alarm.raised("gateway_offline", "gw-1", NOW, "critical", 'said "bye"')
    again = from_message("gateway_offline", "gw-1", alarm.message())
    assert again == alarm
    assert alarm.id == Alarm.raised("gateway_offline", "gw-1", NOW, "x", "y").id
    assert alarm.raise_line().startswith("alarms,kind=gateway_offline,subject=gw-1 ")
    assert alarm.clear_line(NOW).endswith(alarm.raise_line().rsplit(" ", 1)[1])
    assert orjson.loads(alarm.message())["since"] == "2026-12-05T12:00:00.000Z"
    assert from_message("charger_silent", "gw-1", alarm.message()) is None


def test_alarm_topics_and_queries_refuse_what_is_not_an_alarm() -> None:
    topics = Topics("chargers/v1")
    assert topics.alarm("deadletters", "gw-1") == "chargers/v1/alarms/deadletters/gw-1"
    assert topics.alarm_of("chargers/v1/alarms/deadletters/gw-1") == ("deadletters", "gw-1")
    assert topics.alarm_of("chargers/v1/alarms/nope/gw-1") is None
    assert topics.alarm_of("chargers/v1/alarms/deadletters/a/b") is None
    q = influxql.alarms_query(NOW - timedelta(days=1), NOW, 5, active_only=True, kind="deadletters")
    assert '"active" = true' in q
    assert "'deadletters'" in q
    for bad in ("x' OR 1=1", "a/b"):
        try:
            influxql.alarms_query(NOW - timedelta(days=1), NOW, 5, subject=bad)
        except influxql.QueryBuildError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_the_mirror_learns_a_chargers_interval_and_keeps_the_state_heartbeat() -> None:
    mirror = LiveMirror(Topics())
    for i in range(4):
        ts = (NOW + timedelta(seconds=5 * i)).isoformat()
        live = {"charger_id": "cp", "ts": ts, "seq": i + 1, "values": {}, "gateway_id": "gw"}
        assert mirror.apply("chargers/v1/live/cp", orjson.dumps(live), float(i))
    entry = mirror.get("cp")
    assert entry is not None
    assert entry.interval_s == 5.0
    state = {
        "state": "online",
        "ts": NOW.isoformat(),
        "agent_version": "1.2.3",
        "outbox": {"depth": 3, "oldest_unsent_ts": "2026-12-05T11:00:00Z", "unconfirmed": 0},
        "cert_not_after": "2027-01-01T00:00:00Z",
        "extra": 1,
    }
    assert mirror.apply("chargers/v1/gw/state", orjson.dumps(state), 0.0)
    will = b'{"state": "offline", "ts": "2026-12-05T12:01:00Z"}'
    assert mirror.apply("chargers/v1/gw/state", will, 0.0)
    info = mirror.gateway_info()["gw"]
    assert info.state == "offline"
    assert not info.outbox_reported  # the newest message (the will) says nothing of it
    assert info.oldest_unsent == datetime(2026, 12, 5, 11, tzinfo=UTC)
    assert info.cert_not_after == datetime(2027, 1, 1, tzinfo=UTC)


def test_a_heartbeat_without_outbox_says_nothing_of_the_backlog() -> None:
    """Outbox 10 min behind (below the 15 min threshold), then a heartbeat 10 min later without
    outbox (the agent could not read it): the stale oldest is not measured against the new
    heartbeat (no alarm raised), and an active one is held, not cleared."""
    mirror = LiveMirror(Topics())
    beat = {
        "state": "online",
        "ts": (NOW - timedelta(minutes=10)).isoformat(),
        "outbox": {"depth": 3, "oldest_unsent_ts": (NOW - timedelta(minutes=20)).isoformat()},
    }
    assert mirror.apply("chargers/v1/gw/state", orjson.dumps(beat), 0.0)
    assert mirror.apply(
        "chargers/v1/gw/state", orjson.dumps({"state": "online", "ts": NOW.isoformat()}), 0.0
    )
    v = evaluate(Inputs(NOW, gateways=mirror.gateway_info()), Thresholds())
    assert ("edge_backlog", "gw") not in v.firing
    assert not v.knows(("edge_backlog", "gw"))


def test_gateway_clock_from_the_state_heartbeat() -> None:
    """The heartbeat's ``clock``: a source saying unsynchronised raises ``gateway_clock``
    (naming the sources and the offset); one saying none clears it; a state without ``clock``
    (a last will, an older agent) holds it as it is."""
    mirror = LiveMirror(Topics("chargers/v1"))

    def state(gw: str, doc: dict[str, object]) -> None:
        payload = orjson.dumps({"state": "online", "ts": "2026-12-05T12:00:00Z", **doc})
        assert mirror.apply(f"chargers/v1/{gw}/state", payload, 0.0)

    off = {"unsynchronised": {"os": False, "cloud": True}, "offset_s": -412.25}
    state("behind", {"clock": off})
    state("fine", {"clock": {"unsynchronised": {"os": False, "cloud": None}, "offset_s": None}})
    state("old-agent", {})
    info = mirror.gateway_info()
    assert info["behind"].clock_unsynchronised == ("cloud",)
    assert info["behind"].clock_offset_s == -412.25
    assert info["fine"].clock_unsynchronised == ()
    assert info["old-agent"].clock_unsynchronised is None
    v = evaluate(Inputs(NOW, gateways=info), T)
    clock = {s: f for (k, s), f in v.firing.items() if k == "gateway_clock"}
    assert set(clock) == {"behind"}
    assert clock["behind"].detail == (
        "the gateway says its clock is unsynchronised (cloud; -412.2 s off the bridges' clock)"
    )
    assert v.knows(("gateway_clock", "fine"))
    assert not v.knows(("gateway_clock", "old-agent"))
    assert v.knows(("gateway_clock", "retired"))
    active = [("gateway_clock", "fine"), ("gateway_clock", "old-agent")]
    assert changes(v, active)[1] == [("gateway_clock", "fine")]
