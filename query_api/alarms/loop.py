"""The periodic alarm evaluation: raise once, clear once, across restarts of the API.

At start the active alarms are loaded from InfluxDB (retried until it answers). Once the broker
session is up and ``ALARM_SETTLE_S`` has passed (retained states, live values and alarms have
arrived), a retained alarm that InfluxDB does not know is adopted (its id and ``since`` kept),
and every ``ALARM_INTERVAL_S`` the rules are evaluated: a new alarm is stored first, then
published retained; a cleared one is marked cleared in InfluxDB, then its topic emptied. What
could not be published is published at the next round; a retained alarm that is not active
(left by a crash between the two steps) is emptied, an active one that is not retained is
published again. Nothing is evaluated while the broker session is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from query_api.alarms.rules import (
    ChargerView,
    Firing,
    Inputs,
    Key,
    Thresholds,
    changes,
    evaluate,
)
from query_api.alarms.store import MAX_ACTIVE, MAX_DETAIL, Alarm, from_message, read_alarms
from query_api.clock import Clock
from query_api.latest.mirror import LiveMirror
from query_api.metrics import ApiMetrics
from query_api.readings import from_epoch_ns
from query_api.settings import ApiSettings
from telemetry_common import influxql
from telemetry_common.influx_query import InfluxError, InfluxQL
from telemetry_common.influx_write import (
    InfluxWriter,
    WriteError,
    WriteRejectedError,
    create_retention_policy,
)
from telemetry_common.mqtt import MqttError
from telemetry_common.schema import format_ts
from telemetry_common.storage import KEEP_RP, SEQGAP_WINDOW_S
from telemetry_common.topics import ALARM_KINDS

log = logging.getLogger(__name__)

#: Most connectors whose newest status is remembered (connector_faulted).
MAX_CONNECTORS = 1_000_000
#: Connector statuses are read from InfluxDB for the readings stamped since the previous round,
#: less this (readings still on their way when it ran); at start, this far back.
STATUS_MARGIN = timedelta(seconds=60)
STATUS_FIRST_WINDOW = timedelta(minutes=15)
#: Mirror entries read between two yields to the event loop.
YIELD_EVERY = 10_000
#: Alarm points per InfluxDB write.
WRITE_CHUNK = 5_000


def _chunks(alarms: list[Alarm]) -> list[list[Alarm]]:
    """``alarms`` in slices of WRITE_CHUNK (one InfluxDB write each)."""
    return [alarms[i : i + WRITE_CHUNK] for i in range(0, len(alarms), WRITE_CHUNK)]


class AlarmBroker(Protocol):
    @property
    def connected(self) -> bool: ...

    async def retain(self, topic: str, payload: bytes) -> None: ...


class AlarmLoop:
    def __init__(
        self,
        settings: ApiSettings,
        mirror: LiveMirror,
        influx: InfluxQL,
        writer: InfluxWriter,
        broker: Callable[[], AlarmBroker | None],
        metrics: ApiMetrics,
        clock: Clock,
    ) -> None:
        self._s = settings
        self._topics = settings.topics
        self._mirror = mirror
        self._influx = influx
        self._writer = writer
        self._broker = broker
        self._metrics = metrics
        self._clock = clock
        self._thresholds = Thresholds(
            silent_intervals=settings.alarm_silent_intervals,
            silent_min_s=settings.alarm_silent_min_s,
            silent_unlearned_s=settings.state_stale_after_s,
            backlog_s=settings.alarm_backlog_s,
            cert_days=settings.alarm_cert_days,
            deadletters_min=settings.alarm_deadletters_min,
            deadletters_window_s=settings.alarm_deadletters_window_s,
        )
        self._stateless = frozenset({settings.ingest_gateway, *settings.ingest_keys})
        self.active: dict[Key, Alarm] = {}
        #: retained alarm messages seen on the broker, by (kind, subject)
        self._retained: dict[Key, bytes] = {}
        #: what still has to be published: the message, or b"" to empty the topic
        self._pending: dict[Key, bytes] = {}
        self._connectors: dict[tuple[str, int, int], str] = {}
        #: the time of the reading each connector's status comes from (newest wins)
        self._connector_ts: dict[tuple[str, int, int], datetime] = {}
        self._statuses_read: datetime | None = None
        self._up_since: float | None = None
        self._adopted = False
        self.loaded = False
        for kind in ALARM_KINDS:
            metrics.alarms_active.labels(kind).set_function(functools.partial(self.count, kind))

    def count(self, kind: str) -> float:
        """Active alarms of ``kind`` (the gauge ``telemetry_api_alarms_active``)."""
        return float(sum(1 for key in self.active if key[0] == kind))

    # -- fed by the broker session -----------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> bool:
        """A message of ``{root}/alarms/+/+`` (False: not an alarm topic)."""
        key = self._topics.alarm_of(topic)
        if key is None:
            return False
        if payload:
            self._retained[key] = payload
        else:
            self._retained.pop(key, None)
        return True

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        await self._load()
        due = 0.0
        while True:
            await asyncio.sleep(min(self._s.alarm_interval_s, 0.5))
            broker = self._broker()
            mono = time.monotonic()
            if broker is None or not broker.connected:
                self._up_since = None
                continue
            if self._up_since is None:
                self._up_since = mono
            if mono - self._up_since < self._s.alarm_settle_s or mono < due:
                continue
            due = mono + self._s.alarm_interval_s
            try:
                await self.tick(broker)
            except Exception:  # one bad round must not end the alarms
                log.exception("alarm evaluation failed")

    async def _load(self) -> None:
        """The active alarms InfluxDB holds (newest first: an older duplicate is cleared), once
        the retention policy ``keep`` they are kept in exists (the lifespan creates it too)."""
        await create_retention_policy(self._s.influx, KEEP_RP)
        delay = 0.5
        while True:
            now = self._clock.now()
            try:
                found = await read_alarms(
                    self._influx,
                    now - self._s.alarm_lookback,
                    now + timedelta(minutes=5),
                    MAX_ACTIVE,
                    active_only=True,
                )
                break
            except InfluxError as exc:
                log.warning("alarms: InfluxDB not available (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for alarm in found:
            key = (alarm.kind, alarm.subject)
            if key not in self.active:
                self.active[key] = alarm
            else:
                await self._write([alarm.clear_line(now)])  # best effort: the older duplicate
        self.loaded = True
        log.info("alarms: %d active loaded from InfluxDB", len(self.active))

    async def _write(self, lines: list[str]) -> set[str] | None:
        """Store ``lines`` in the retention policy ``keep``: the lines InfluxDB refused for good
        (each logged), or None when it could not take them now (tried again next round). A
        refused write (say ``partial write: points beyond retention policy dropped=N``, which
        stores the other lines) is split until each refused line is alone: the others are
        stored (written again: same points, same fields) and count as written."""
        try:
            await self._writer.write(lines, rp=KEEP_RP)
        except WriteRejectedError as exc:
            if len(lines) == 1:
                log.warning("alarms: InfluxDB refused %s: %s", lines[0], exc.detail)
                return {lines[0]}
            mid = len(lines) // 2
            first = await self._write(lines[:mid])
            second = await self._write(lines[mid:])
            return None if first is None or second is None else first | second
        except WriteError as exc:
            log.warning("alarms: InfluxDB did not store %d lines: %s", len(lines), exc)
            return None
        return set()

    async def tick(self, broker: AlarmBroker) -> None:
        """One round: adopt (once), reconcile with the retained topics, evaluate, publish."""
        if not self._adopted:
            await self._adopt()
        self._reconcile()
        inputs = await self._inputs()
        verdict = evaluate(inputs, self._thresholds)
        to_raise, to_clear = changes(verdict, self.active)
        now = inputs.now
        await self._escalate(verdict.firing)
        raised = [
            Alarm.raised(kind, subject, now, firing.severity, firing.detail)
            for (kind, subject), firing in sorted(to_raise.items())
        ]
        for chunk in _chunks(raised):
            if await self._write([alarm.raise_line() for alarm in chunk]) is None:
                continue  # tried again next round
            # A refused raise (not kept in InfluxDB, logged) is raised all the same: published,
            # and cleared when its condition ends; trying it again could never succeed.
            for alarm in chunk:
                key = (alarm.kind, alarm.subject)
                self.active[key] = alarm
                self._pending[key] = alarm.message()
                self._metrics.alarms_raised.labels(alarm.kind).inc()
                log.warning("alarm raised: %s %s: %s", alarm.kind, alarm.subject, alarm.detail)
        for chunk in _chunks([self.active[key] for key in to_clear]):
            if await self._write([alarm.clear_line(now) for alarm in chunk]) is None:
                continue
            # A refused clear (logged) clears all the same: retried, it would be refused again
            # and hold the alarm forever.
            for alarm in chunk:
                key = (alarm.kind, alarm.subject)
                del self.active[key]
                self._pending[key] = b""
                self._metrics.alarms_cleared.labels(alarm.kind).inc()
                log.info("alarm cleared: %s %s (raised %s)", *key, format_ts(alarm.since))
        await self._publish(broker)
        self._metrics.alarm_rounds.inc()

    async def _escalate(self, firing: dict[Key, Firing]) -> None:
        """An active warning whose condition is now critical (a certificate within 2 days of
        expiry) becomes critical: the same occurrence (id, ``since``) stored again with the new
        severity and detail, then its retained message published again."""
        for key, now_firing in sorted(firing.items()):
            alarm = self.active.get(key)
            if alarm is None or alarm.severity != "warning" or now_firing.severity != "critical":
                continue
            escalated = dataclasses.replace(
                alarm, severity=now_firing.severity, detail=now_firing.detail[:MAX_DETAIL]
            )
            if await self._write([escalated.raise_line()]) is not None:
                self.active[key] = escalated
                self._pending[key] = escalated.message()
                log.warning("alarm escalated: %s %s: %s", *key, escalated.detail)

    async def _adopt(self) -> None:
        """Retained alarms InfluxDB does not know (stored before a crash, or by a predecessor
        whose write failed) become active, with their own id and ``since``."""
        for key, payload in list(self._retained.items()):
            if key in self.active:
                continue
            alarm = from_message(key[0], key[1], payload)
            if alarm is None or await self._stored_cleared(alarm):
                continue  # not ours, or cleared (its topic not emptied yet): emptied below
            if await self._write([alarm.raise_line()]) is not None:
                self.active[key] = alarm
                log.info("alarm adopted from its retained topic: %s %s", *key)
        self._adopted = True

    async def _stored_cleared(self, alarm: Alarm) -> bool:
        """Whether InfluxDB holds ``alarm``'s occurrence as cleared (True also when it cannot
        tell: adopting it would risk raising a cleared alarm again)."""
        try:
            found = await read_alarms(
                self._influx,
                alarm.since,
                alarm.since + timedelta(milliseconds=1),
                1,
                kind=alarm.kind,
                subject=alarm.subject,
            )
        except InfluxError as exc:
            log.warning("alarms: %s %s not adopted: %s", alarm.kind, alarm.subject, exc)
            return True
        return bool(found) and found[0].cleared_at is not None

    def _reconcile(self) -> None:
        for key in self._retained.keys() - self.active.keys() - self._pending.keys():
            self._pending[key] = b""  # retained but not active: left dangling
        for key, alarm in self.active.items():
            if key not in self._pending and self._retained.get(key) != alarm.message():
                self._pending[key] = alarm.message()

    async def _publish(self, broker: AlarmBroker) -> None:
        for key, payload in list(self._pending.items()):
            try:
                await broker.retain(self._topics.alarm(*key), payload)
            except (MqttError, TimeoutError) as exc:
                log.warning("alarm %s %s not published yet: %s", *key, exc)
                return
            if self._pending.get(key) == payload:
                del self._pending[key]
            if payload:
                self._retained[key] = payload
            else:
                self._retained.pop(key, None)

    async def _inputs(self) -> Inputs:
        now = self._clock.now()
        seqgaps = await self._seqgaps(now)
        deadletters = await self._deadletters(now)
        chargers = []
        for n, (charger_id, entry) in enumerate(self._mirror.entries(), 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a big fleet: requests are served meanwhile
            snap = entry.snapshot
            chargers.append(ChargerView(charger_id, snap.gateway_id, snap.ts, entry.interval_s))
            if snap.status is not None:
                self._status((charger_id, snap.evse_id, snap.connector_id), snap.status, snap.ts)
        # The live feed carries each charger's newest reading only: the other connectors of a
        # charger (two reporting in one batch) have their statuses from InfluxDB.
        await self._connector_statuses(now)
        # A charger gone from the mirror (retired: its live topic emptied) takes its connectors
        # along: their alarms clear, and a charger back later starts from its new statuses.
        present = {c.charger_id for c in chargers}
        for key in [key for key in self._connectors if key[0] not in present]:
            del self._connectors[key]
            self._connector_ts.pop(key, None)
        return Inputs(
            now=now,
            chargers=chargers,
            connectors=self._connectors,
            gateways=self._mirror.gateway_info(),
            stateless=self._stateless,
            settled=True,
            seqgaps=seqgaps,
            deadletters=deadletters,
            silent_since={
                subject: alarm.since
                for (kind, subject), alarm in self.active.items()
                if kind == "charger_silent"
            },
        )

    def _status(self, key: tuple[str, int, int], status: str, ts: datetime) -> None:
        held = self._connector_ts.get(key)
        if held is not None and held > ts:
            return
        if key in self._connectors or len(self._connectors) < MAX_CONNECTORS:
            self._connectors[key] = status
            self._connector_ts[key] = ts

    async def _connector_statuses(self, now: datetime) -> None:
        since = (self._statuses_read or now - STATUS_FIRST_WINDOW) - STATUS_MARGIN
        try:
            series = await self._influx.query(influxql.connector_statuses_query(since))
        except InfluxError as exc:
            log.warning("alarms: connector statuses not read: %s", exc)
            return
        self._statuses_read = now
        for s in series:
            charger, evse, connector = (
                s.tags.get(t) or "" for t in ("charger_id", "evse_id", "connector_id")
            )
            if not (charger and evse.isdigit() and connector.isdigit()):
                continue
            for row in s.rows():
                status, t = row.get("status"), row.get("time")
                if isinstance(status, str) and isinstance(t, int):
                    self._status((charger, int(evse), int(connector)), status, from_epoch_ns(t))

    async def _seqgaps(self, now: datetime) -> dict[str, tuple[int, str]] | None:
        q = influxql.seqgaps_query(now - timedelta(seconds=SEQGAP_WINDOW_S))
        try:
            series = await self._influx.query(q)
        except InfluxError as exc:
            log.warning("alarms: seqgaps not read: %s", exc)
            return None
        out: dict[str, tuple[int, str]] = {}
        for s in series:
            gateway = s.tags.get("gateway_id") or ""
            for row in s.rows() if gateway else []:
                missing = row.get("missing")
                held = out.get(gateway, (0, ""))
                epoch = row.get("epoch")
                count = int(missing) if isinstance(missing, int | float) else 0
                # Every bridge that saw the gap reports it: the largest, never the sum (the
                # same missing readings would be counted once per bridge).
                if count > held[0] or gateway not in out:
                    out[gateway] = (count, epoch if isinstance(epoch, str) else held[1])
        return out

    async def _deadletters(self, now: datetime) -> dict[str, int] | None:
        window = timedelta(seconds=self._s.alarm_deadletters_window_s)
        try:
            series = await self._influx.query(influxql.deadletter_counts_query(now - window))
        except InfluxError as exc:
            log.warning("alarms: dead letters not counted: %s", exc)
            return None
        out: dict[str, int] = {}
        for s in series:
            gateway = s.tags.get("gateway_id") or ""
            for row in s.rows() if gateway else []:
                count = row.get("count")
                out[gateway] = int(count) if isinstance(count, int | float) else 0
        return out
