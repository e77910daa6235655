"""The alarm evaluator's rounds with fakes (InfluxQL answers, a writer, a broker): stored
before published, raised once, adopted from a retained topic, a dangling one emptied, and a
failed write or publish tried again next round."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from pydantic import SecretStr

from query_api.alarms.loop import AlarmLoop
from query_api.alarms.store import Alarm
from query_api.latest.mirror import LiveMirror
from query_api.metrics import ApiMetrics
from query_api.settings import ApiSettings
from telemetry_common.influx_query import Series
from telemetry_common.influx_write import WriteRejectedError, WriteUnavailableError
from telemetry_common.mqtt import NotConnectedError
from tests.support.fake_influx import FakeInflux, FixedClock

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ROOT = "chargers/v1"


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.rps: set[str | None] = set()
        self.fail = False
        #: lines refused as InfluxDB 1.x does a point beyond the retention policy: the
        #: request answers 400 ``partial write``, the other lines are stored
        self.refuse: set[str] = set()

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        if self.fail:
            raise WriteUnavailableError(None, "down")
        self.rps.add(rp)
        self.lines.extend(line for line in lines if line not in self.refuse)
        dropped = sum(1 for line in lines if line in self.refuse)
        if dropped:
            raise WriteRejectedError(
                400, f"partial write: points beyond retention policy dropped={dropped}"
            )

    async def prepare(self) -> None: ...

    async def aclose(self) -> None: ...


class Broker:
    def __init__(self, loop: list[AlarmLoop]) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False
        self._loop = loop

    @property
    def connected(self) -> bool:
        return True

    async def retain(self, topic: str, payload: bytes) -> None:
        if self.fail:
            raise NotConnectedError("api")
        self.sent.append((topic, payload))
        self._loop[0].on_message(topic, payload)  # the broker's echo


def _setup() -> tuple[AlarmLoop, LiveMirror, Writer, Broker]:
    settings = ApiSettings(keys={"read": SecretStr("read-key-0123456789")})
    mirror = LiveMirror(settings.topics)
    writer = Writer()
    holder: list[AlarmLoop] = []
    broker = Broker(holder)
    loop = AlarmLoop(
        settings, mirror, FakeInflux(), writer, lambda: broker, ApiMetrics(), FixedClock(NOW)
    )
    holder.append(loop)
    return loop, mirror, writer, broker


def _offline(mirror: LiveMirror, gw: str) -> None:
    mirror.apply(f"{ROOT}/{gw}/state", b'{"state": "offline", "ts": "2026-12-05T11:00:00Z"}', 0)


async def test_raised_once_stored_first_then_cleared_once() -> None:
    loop, mirror, writer, broker = _setup()
    _offline(mirror, "gw-1")
    await loop.tick(broker)
    await loop.tick(broker)
    assert len(writer.lines) == 1
    assert writer.lines[0].startswith("alarms,kind=gateway_offline,subject=gw-1 ")
    ((topic, payload),) = broker.sent
    assert topic == f"{ROOT}/alarms/gateway_offline/gw-1"
    assert orjson.loads(payload)["since"] == "2026-12-05T12:00:00.000Z"
    mirror.apply(f"{ROOT}/gw-1/state", b'{"state": "online", "ts": "2026-12-05T12:00:00Z"}', 0)
    await loop.tick(broker)
    await loop.tick(broker)
    assert len(writer.lines) == 2
    assert "active=false,cleared_at=" in writer.lines[1]
    assert broker.sent[1:] == [(topic, b"")]
    assert loop.count("gateway_offline") == 0.0


async def test_a_failed_write_raises_nothing_and_a_failed_publish_is_sent_later() -> None:
    loop, mirror, writer, broker = _setup()
    _offline(mirror, "gw-1")
    writer.fail = True
    await loop.tick(broker)
    assert loop.active == {}
    assert broker.sent == []
    writer.fail, broker.fail = False, True
    await loop.tick(broker)
    assert len(loop.active) == 1
    assert broker.sent == []
    broker.fail = False
    await loop.tick(broker)
    assert len(broker.sent) == 1
    assert len(writer.lines) == 1


async def test_a_retained_alarm_unknown_to_influxdb_is_adopted_and_a_dangling_one_emptied() -> None:
    """Adopted: it fires still, keeps its id and since, is stored and not published again.
    Dangling (the rule knows its subject and it does not fire): emptied."""
    loop, mirror, writer, broker = _setup()
    _offline(mirror, "gw-1")
    mirror.apply(f"{ROOT}/gw-2/state", b'{"state": "online", "ts": "2026-12-05T12:00:00Z"}', 0)
    earlier = Alarm.raised("gateway_offline", "gw-1", datetime(2026, 12, 1, tzinfo=UTC), "c", "d")
    loop.on_message(f"{ROOT}/alarms/gateway_offline/gw-1", earlier.message())
    loop.on_message(f"{ROOT}/alarms/gateway_offline/gw-2", b"not ours")
    await loop.tick(broker)
    assert loop.active[("gateway_offline", "gw-1")].id == earlier.id
    assert writer.lines == [earlier.raise_line()]
    assert broker.sent == [(f"{ROOT}/alarms/gateway_offline/gw-2", b"")]


async def test_a_retained_alarm_influxdb_holds_as_cleared_is_emptied_not_adopted() -> None:
    """A crash after the clear was stored but before the topic was emptied: at the next start
    the retained message is not taken for an active alarm (it would be raised twice)."""
    loop, mirror, writer, broker = _setup()
    _offline(mirror, "gw-1")
    since = datetime(2026, 12, 1, tzinfo=UTC)
    cleared = Alarm.raised("gateway_offline", "gw-1", since, "critical", "d")
    ns = int(since.timestamp()) * 10**9
    row = [ns, False, ns + 10**9, "d", cleared.id, "gateway_offline", "critical", "gw-1"]
    columns = ["time", "active", "cleared_at", "detail", "id", "kind", "severity", "subject"]
    assert isinstance(loop._influx, FakeInflux)
    loop._influx.answers.append([Series("alarms", columns, [row])])
    loop.on_message(f"{ROOT}/alarms/gateway_offline/gw-1", cleared.message())
    await loop.tick(broker)
    new = loop.active[("gateway_offline", "gw-1")]
    assert new.id != cleared.id  # firing still: a new occurrence, raised now
    assert new.since == NOW
    assert writer.lines == [new.raise_line()]
    assert broker.sent == [(f"{ROOT}/alarms/gateway_offline/gw-1", new.message())]


async def test_a_partial_write_clears_the_other_alarms_and_drops_the_refused_line() -> None:
    """Two clears in one write, one refused (InfluxDB: ``partial write``): both alarms are
    cleared and their topics emptied; nothing is retried. Alarms go to the policy ``keep``."""
    loop, mirror, writer, broker = _setup()
    _offline(mirror, "gw-1")
    _offline(mirror, "gw-2")
    await loop.tick(broker)
    assert set(loop.active) == {("gateway_offline", "gw-1"), ("gateway_offline", "gw-2")}
    old = loop.active[("gateway_offline", "gw-1")]
    for gw in ("gw-1", "gw-2"):
        mirror.apply(f"{ROOT}/{gw}/state", b'{"state": "online", "ts": "2026-12-05T12:00:00Z"}', 0)
    writer.refuse.add(old.clear_line(NOW))
    await loop.tick(broker)
    assert loop.active == {}
    assert sorted(broker.sent[2:]) == [
        (f"{ROOT}/alarms/gateway_offline/gw-1", b""),
        (f"{ROOT}/alarms/gateway_offline/gw-2", b""),
    ]
    stored = len(writer.lines)
    await loop.tick(broker)
    assert len(writer.lines) == stored  # nothing tried again
    assert writer.rps == {"keep"}


def _live(mirror: LiveMirror, charger: str, gw: str, status: str, at: datetime = NOW) -> None:
    doc = {
        "charger_id": charger, "gateway_id": gw, "evse_id": 1, "connector_id": 1,
        "status": status, "ts": at.isoformat(), "seq": 1, "values": {},
    }  # fmt: skip
    assert mirror.apply(f"{ROOT}/live/{charger}", orjson.dumps(doc), 0.0)


async def test_a_retired_chargers_connector_faulted_clears() -> None:
    """A Faulted connector raises connector_faulted; its charger retired (live topic emptied):
    the alarm clears (the loop forgets the connectors of a charger the mirror lost)."""
    loop, mirror, _, broker = _setup()
    online = b'{"state": "online", "ts": "2026-12-05T12:00:00Z"}'
    mirror.apply(f"{ROOT}/gw-1/state", online, 0)
    _live(mirror, "cp-1", "gw-1", "Faulted")
    await loop.tick(broker)
    assert set(loop.active) == {("connector_faulted", "cp-1.1.1")}
    assert mirror.apply(f"{ROOT}/live/cp-1", b"", 0.0)
    await loop.tick(broker)
    assert loop.active == {}
    assert broker.sent[-1] == (f"{ROOT}/alarms/connector_faulted/cp-1.1.1", b"")


async def test_a_retired_gateways_backlog_and_certificate_alarms_clear() -> None:
    """edge_backlog and certificate_expiry raised from a heartbeat; a heartbeat without outbox
    keeps them as they are; the gateway retired (its state topic emptied): both clear."""
    loop, mirror, _, broker = _setup()
    beat = {
        "state": "online",
        "ts": "2026-12-05T12:00:00Z",
        "outbox": {"depth": 9, "oldest_unsent_ts": "2026-12-05T11:00:00Z", "unconfirmed": 0},
        "cert_not_after": "2026-12-08T00:00:00Z",
    }
    mirror.apply(f"{ROOT}/gw-1/state", orjson.dumps(beat), 0)
    await loop.tick(broker)
    kinds = {("edge_backlog", "gw-1"), ("certificate_expiry", "gw-1")}
    assert set(loop.active) == kinds
    del beat["outbox"]  # its agent could not read the outbox
    mirror.apply(f"{ROOT}/gw-1/state", orjson.dumps(beat), 0)
    await loop.tick(broker)
    assert set(loop.active) == kinds
    assert mirror.apply(f"{ROOT}/gw-1/state", b"", 0)
    await loop.tick(broker)
    assert loop.active == {}
    assert sorted(broker.sent[2:]) == [
        (f"{ROOT}/alarms/certificate_expiry/gw-1", b""),
        (f"{ROOT}/alarms/edge_backlog/gw-1", b""),
    ]


async def test_a_certificate_warning_becomes_critical_within_two_days() -> None:
    """Within 14 days: warning; within 2 days (as the Prometheus rule
    TelemetryCertificateExpiryCritical): the same occurrence, critical, stored and published
    again."""
    loop, mirror, writer, broker = _setup()

    def beat(not_after: str) -> None:
        doc = {"state": "online", "ts": "2026-12-05T12:00:00Z", "cert_not_after": not_after}
        mirror.apply(f"{ROOT}/gw-1/state", orjson.dumps(doc), 0)

    beat("2026-12-12T12:00:00Z")
    await loop.tick(broker)
    first = loop.active[("certificate_expiry", "gw-1")]
    assert first.severity == "warning"
    beat("2026-12-07T00:00:00Z")  # 36 h left
    await loop.tick(broker)
    now = loop.active[("certificate_expiry", "gw-1")]
    assert (now.id, now.since, now.severity) == (first.id, first.since, "critical")
    assert "2026-12-07T00:00:00.000Z" in now.detail
    assert writer.lines[-1] == now.raise_line()
    topic = f"{ROOT}/alarms/certificate_expiry/gw-1"
    assert broker.sent == [(topic, first.message()), (topic, now.message())]


async def test_a_gap_seen_by_two_bridges_is_counted_once() -> None:
    """Both bridges confirm the same 2 readings missing: 2, not 4."""
    loop, _, _, broker = _setup()
    assert isinstance(loop._influx, FakeInflux)
    loop._influx.answers.append(
        [
            Series(
                "seqgaps",
                ["time", "missing", "epoch"],
                [[0, 2, "e1"]],
                {"gateway_id": "gw-1", "bridge": b},
            )
            for b in ("bridge-a", "bridge-b")
        ]
    )
    await loop.tick(broker)
    alarm = loop.active[("seq_gap_confirmed", "gw-1")]
    assert alarm.detail.startswith("2 readings confirmed missing (epoch e1)")
