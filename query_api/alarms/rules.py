"""Each alarm kind's condition, evaluated from what the API holds (pure).

A rule answers, for its kind, which subjects fire now and which subjects it *knows* about: an
active alarm is cleared only when its rule knows the subject and it no longer fires. A subject
the rule has no information about (a connector not heard from since a restart, a gateway whose
last will carries no outbox) keeps its alarm as it is: nothing is cleared for lack of news.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from query_api.latest.mirror import GatewayInfo
from telemetry_common.schema import format_ts

#: Every subject: the rule's input covers the whole fleet (absence means "not firing").
ALL: Final = None

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Firing:
    severity: str
    detail: str


#: The subjects a rule knows: a set, ALL, or a test of one subject.
Known = set[str] | Callable[[str], bool] | None


@dataclass(slots=True)
class Verdict:
    """What the rules say: the alarms that fire, and per kind the subjects known (ALL: every
    subject; a kind missing from ``known``: nothing is known, nothing clears)."""

    firing: dict[Key, Firing] = field(default_factory=dict)
    known: dict[str, Known] = field(default_factory=dict)

    def knows(self, key: Key) -> bool:
        kind, subject = key
        if kind not in self.known:
            return False
        subjects = self.known[kind]
        if subjects is ALL:
            return True
        if isinstance(subjects, set):
            return subject in subjects
        return subjects(subject)


@dataclass(frozen=True, slots=True)
class ChargerView:
    """A charger's newest reading as the mirror holds it."""

    charger_id: str
    gateway_id: str | None
    ts: datetime
    interval_s: float | None


@dataclass(frozen=True, slots=True)
class Thresholds:
    silent_intervals: float = 3.0
    silent_min_s: float = 60.0
    silent_unlearned_s: float = 300.0
    backlog_s: float = 900.0
    cert_days: float = 14.0
    #: critical within this many days of expiry, as the Prometheus rule
    #: TelemetryCertificateExpiryCritical (docker/prometheus/alerts.yml)
    cert_critical_days: float = 2.0
    deadletters_min: int = 1
    deadletters_window_s: float = 900.0


@dataclass(slots=True)
class Inputs:
    now: datetime
    chargers: list[ChargerView] = field(default_factory=list)
    #: (charger, evse, connector) -> the newest status seen
    connectors: Mapping[tuple[str, int, int], str] = field(default_factory=dict)
    gateways: Mapping[str, GatewayInfo] = field(default_factory=dict)
    #: gateways that never announce a state (HTTP ingest)
    stateless: frozenset[str] = frozenset()
    #: True once retained states had time to arrive: a gateway without one is offline
    settled: bool = True
    #: per gateway, readings confirmed missing (None: the query failed)
    seqgaps: Mapping[str, tuple[int, str]] | None = None
    #: per gateway, dead letters stored in the window (None: the query failed)
    deadletters: Mapping[str, int] | None = None
    #: per charger, when its active charger_silent alarm was raised
    silent_since: Mapping[str, datetime] = field(default_factory=dict)


def connector_subject(charger_id: str, evse_id: int, connector_id: int) -> str:
    return f"{charger_id}.{evse_id}.{connector_id}"


def _offline_gateways(inputs: Inputs, verdict: Verdict) -> set[str]:
    """gateway_offline; returns the gateways offline (their chargers' silence is not judged)."""
    known: set[str] = set()
    offline: set[str] = set()
    for gw, info in inputs.gateways.items():
        known.add(gw)
        if info.state == "offline":
            offline.add(gw)
            since = f" since {format_ts(info.ts)}" if info.ts is not None else ""
            verdict.firing[("gateway_offline", gw)] = Firing(
                "critical", f"the gateway's state is offline (last will or goodbye){since}"
            )
    referenced = {c.gateway_id for c in inputs.chargers if c.gateway_id is not None}
    for gw in referenced - inputs.gateways.keys() - inputs.stateless:
        if inputs.settled:
            known.add(gw)
            offline.add(gw)
            verdict.firing[("gateway_offline", gw)] = Firing(
                "critical", "no birth message: the gateway never announced its state"
            )
    # Settled, every retained state is in: a gateway neither announced nor referenced by a
    # charger (retired: its topics emptied) has nothing to be offline about.
    verdict.known["gateway_offline"] = ALL if inputs.settled else known
    return offline


def _silent(inputs: Inputs, t: Thresholds, offline: set[str], verdict: Verdict) -> None:
    held: set[str] = set()
    for c in inputs.chargers:
        if c.gateway_id in offline or (not inputs.settled and c.gateway_id not in inputs.gateways):
            held.add(c.charger_id)  # its gateway is not online: the gateway's alarm says it
            continue
        if c.interval_s is not None and c.interval_s > 0:
            limit = max(t.silent_intervals * c.interval_s, t.silent_min_s)
            why = f"{t.silent_intervals:g} x its interval of {c.interval_s:.1f} s"
        else:
            limit = max(t.silent_unlearned_s, t.silent_min_s)
            why = "its interval is not learned yet"
        age = (inputs.now - c.ts).total_seconds()
        since = inputs.silent_since.get(c.charger_id)
        if age <= limit and c.interval_s is None and since is not None and c.ts <= since:
            # Silent already, and its interval unknown (the API restarted: the mirror holds only
            # the retained last value): no reading since the raise, so no news; held.
            held.add(c.charger_id)
            continue
        if age > limit:
            verdict.firing[("charger_silent", c.charger_id)] = Firing(
                "warning",
                f"no reading since {format_ts(c.ts)} ({age:.0f} s > {limit:.0f} s: {why})",
            )
    # A charger the mirror does not hold (its live topic emptied) has nothing to be silent about.
    verdict.known["charger_silent"] = (lambda subject: subject not in held) if held else ALL


def _faulted(inputs: Inputs, verdict: Verdict) -> None:
    known: set[str] = set()
    chargers = {c.charger_id for c in inputs.chargers}
    for (charger, evse, connector), status in inputs.connectors.items():
        subject = connector_subject(charger, evse, connector)
        known.add(subject)
        if status == "Faulted":
            verdict.firing[("connector_faulted", subject)] = Firing(
                "warning", f"connector {connector} of EVSE {evse} of {charger} reports Faulted"
            )
    # A connector not heard from since a restart keeps its alarm while its charger is held; a
    # charger gone from the mirror (its live topic emptied) takes its connectors' alarms along.
    verdict.known["connector_faulted"] = lambda subject: (
        subject in known or subject.rsplit(".", 2)[0] not in chargers
    )


def _edge(inputs: Inputs, t: Thresholds, verdict: Verdict) -> None:
    backlog: set[str] = set()
    certs: set[str] = set()
    clocks: set[str] = set()
    for gw, info in inputs.gateways.items():
        if info.clock_unsynchronised is not None:
            clocks.add(gw)
            if info.clock_unsynchronised:
                offset = info.clock_offset_s
                off = f"; {offset:+.1f} s off the bridges' clock" if offset is not None else ""
                verdict.firing[("gateway_clock", gw)] = Firing(
                    "warning",
                    f"the gateway says its clock is unsynchronised "
                    f"({', '.join(info.clock_unsynchronised)}{off})",
                )
        if info.outbox_reported and info.ts is not None:
            backlog.add(gw)
            oldest = info.oldest_unsent
            if oldest is not None and (info.ts - oldest).total_seconds() > t.backlog_s:
                verdict.firing[("edge_backlog", gw)] = Firing(
                    "warning",
                    f"oldest unsent reading from {format_ts(oldest)} "
                    f"(reported at {format_ts(info.ts)}; threshold {t.backlog_s:g} s)",
                )
        if info.cert_not_after is not None:
            certs.add(gw)
            left = info.cert_not_after - inputs.now
            if left < timedelta(days=t.cert_days):
                verdict.firing[("certificate_expiry", gw)] = Firing(
                    "critical" if left < timedelta(days=t.cert_critical_days) else "warning",
                    f"the gateway's certificate expires {format_ts(info.cert_not_after)} "
                    f"(threshold {t.cert_days:g} days)",
                )
    # Settled, every retained state is in: a gateway without one (retired: its state topic
    # emptied) has no backlog nor certificate to be alarmed about. One whose newest state says
    # nothing of them (a last will, a heartbeat without outbox) keeps its alarms as they are.
    verdict.known["edge_backlog"] = _reported_or_gone(backlog, inputs)
    verdict.known["certificate_expiry"] = _reported_or_gone(certs, inputs)
    verdict.known["gateway_clock"] = _reported_or_gone(clocks, inputs)


def _reported_or_gone(reported: set[str], inputs: Inputs) -> Known:
    if not inputs.settled:
        return reported
    present = inputs.gateways.keys()
    return lambda subject: subject in reported or subject not in present


def _stored(inputs: Inputs, t: Thresholds, verdict: Verdict) -> None:
    if inputs.seqgaps is not None:
        verdict.known["seq_gap_confirmed"] = ALL
        for gw, (missing, epoch) in inputs.seqgaps.items():
            if missing > 0:
                of = f" (epoch {epoch})" if epoch else ""
                verdict.firing[("seq_gap_confirmed", gw)] = Firing(
                    "critical", f"{missing} readings confirmed missing{of}: in no bridge's store"
                )
    if inputs.deadletters is not None:
        verdict.known["deadletters"] = ALL
        for gw, count in inputs.deadletters.items():
            if count >= t.deadletters_min:
                verdict.firing[("deadletters", gw)] = Firing(
                    "warning",
                    f"{count} dead letters in the last {t.deadletters_window_s:g} s "
                    f"(threshold {t.deadletters_min})",
                )


def evaluate(inputs: Inputs, thresholds: Thresholds) -> Verdict:
    """Every kind's verdict from ``inputs``."""
    verdict = Verdict()
    offline = _offline_gateways(inputs, verdict)
    _silent(inputs, thresholds, offline, verdict)
    _faulted(inputs, verdict)
    _edge(inputs, thresholds, verdict)
    _stored(inputs, thresholds, verdict)
    return verdict


def changes(verdict: Verdict, active: Iterable[Key]) -> tuple[dict[Key, Firing], list[Key]]:
    """``(to_raise, to_clear)``: what fires and is not active; what is active, known and no
    longer fires."""
    held = set(active)
    to_raise = {k: f for k, f in verdict.firing.items() if k not in held}
    to_clear = sorted(k for k in held if k not in verdict.firing and verdict.knows(k))
    return to_raise, to_clear
