"""The API's in-memory mirror of the last-value cache, fed by the retained live topics (pure).

The bridge publishes each charger's newest stored reading, retained, on ``{root}/live/{charger}``,
and each gateway announces ``online``/``offline`` (birth and last will) retained on
``{root}/{gateway}/state``; :class:`~query_api.broker.BrokerLink` subscribes to both and hands
every message to :meth:`LiveMirror.apply`.

Each entry remembers when its value arrived and when InfluxDB last confirmed that nothing newer
is stored (``checked``): ``/latest`` decides from these whether memory is enough (see
:func:`query_api.latest.read.get_latest`). A value never replaces a newer one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import orjson

from query_api.latest.snapshot import Snapshot, from_live
from telemetry_common.ids import is_valid_id
from telemetry_common.topics import Topics

log = logging.getLogger(__name__)

NEVER: Final = float("-inf")


@dataclass(slots=True)
class Entry:
    snapshot: Snapshot
    #: monotonic time the value arrived (live message or InfluxDB answer)
    received: float
    #: monotonic time InfluxDB last confirmed nothing newer is stored (NEVER: not yet)
    checked: float = NEVER
    #: the charger's reporting interval learned from the ``ts`` of its successive values
    #: (smoothed; None until two were seen): the ``charger_silent`` alarm waits a few of these
    interval_s: float | None = None


#: Weight of the newest step in the learned interval (exponential smoothing).
INTERVAL_WEIGHT: Final = 0.3


@dataclass(slots=True)
class GatewayInfo:
    """What a gateway's retained state said last (docs/design.md#gateway-state): ``state`` and
    ``ts`` of the newest message; the outbox and certificate of the newest that carried them
    (the last will does not); ``outbox_reported``: the newest message carried an outbox;
    ``clock_unsynchronised``: the sources by which the newest message's ``clock`` says the
    gateway's clock is unsynchronised (None: the newest message said nothing of the clock),
    ``clock_offset_s`` its offset from the bridges' clock. For the fleet view
    (``/v1/gateways``): ``last_online``, the ``ts`` of the newest birth or heartbeat; ``since``,
    when the current state began as far as this process saw: the ``ts`` of its first message,
    but for ``offline`` no earlier than ``last_online`` (a last will carries the time of the
    connect it was registered at, not of the death); the agent version, the heartbeat's
    ``interval_s``, and the outbox's depth, unconfirmed readings and drops by reason of the
    newest message that carried them (None: never said; an older agent sends no drops)."""

    state: str
    ts: datetime | None = None
    outbox_reported: bool = False
    oldest_unsent: datetime | None = None
    cert_not_after: datetime | None = None
    clock_unsynchronised: tuple[str, ...] | None = None
    clock_offset_s: float | None = None
    since: datetime | None = None
    last_online: datetime | None = None
    agent_version: str | None = None
    interval_s: float | None = None
    depth: int | None = None
    unconfirmed: int | None = None
    drops: dict[str, int] | None = None


def _time(value: object) -> datetime | None:
    """An ISO 8601 time with a timezone, else None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else None


def _count(value: object) -> int | None:
    """A non-negative integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _drops(value: object) -> dict[str, int] | None:
    """An outbox's ``drops`` object (reason -> count); None if absent or not an object."""
    if not isinstance(value, dict):
        return None
    return {str(k): n for k, v in value.items() if (n := _count(v)) is not None}


def _clock(value: object) -> tuple[tuple[str, ...] | None, float | None]:
    """The sources a state's ``clock`` says unsynchronised (None: no ``clock``), its offset."""
    if not isinstance(value, dict) or not isinstance(value.get("unsynchronised"), dict):
        return None, None
    sources = tuple(sorted(str(k) for k, v in value["unsynchronised"].items() if v is True))
    offset = value.get("offset_s")
    if isinstance(offset, int | float) and not isinstance(offset, bool) and math.isfinite(offset):
        return sources, float(offset)
    return sources, None


class LiveMirror:
    def __init__(self, topics: Topics, *, max_chargers: int = 1_000_000) -> None:
        self._live_prefix = f"{topics.root}/live/"
        self._root = f"{topics.root}/"
        self._max = max_chargers
        self._entries: dict[str, Entry] = {}
        self._gateways: dict[str, str] = {}
        self._gateway_info: dict[str, GatewayInfo] = {}
        self.refused = 0
        self.full = 0

    # -- feeding -----------------------------------------------------------------------------
    def apply(self, topic: str, payload: bytes, now: float) -> bool:
        """Take one message of ``{root}/live/+`` or ``{root}/+/state``; False if it is ignored."""
        if topic.startswith(self._live_prefix):
            return self._apply_live(topic[len(self._live_prefix) :], payload, now)
        if topic.startswith(self._root) and topic.endswith("/state"):
            return self._apply_state(topic[len(self._root) : -len("/state")], payload)
        self.refused += 1
        return False

    def _apply_live(self, charger_id: str, payload: bytes, now: float) -> bool:
        if not is_valid_id(charger_id):
            self.refused += 1
            return False
        if not payload:  # a cleared retained topic
            return self._entries.pop(charger_id, None) is not None
        snapshot = from_live(payload)
        if snapshot is None or snapshot.charger_id != charger_id:
            self.refused += 1
            log.warning("ignoring an invalid live message for %s", charger_id)
            return False
        return self.offer(snapshot, now)

    def _apply_state(self, gateway_id: str, payload: bytes) -> bool:
        if not is_valid_id(gateway_id):
            self.refused += 1
            return False
        if not payload:
            self._gateway_info.pop(gateway_id, None)
            return self._gateways.pop(gateway_id, None) is not None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        state = doc.get("state") if isinstance(doc, dict) else None
        if state not in ("online", "offline"):
            self.refused += 1
            return False
        self._gateways[gateway_id] = state
        info = self._gateway_info.get(gateway_id)
        ts = _time(doc.get("ts"))
        if info is None or info.state != state:
            info = info or GatewayInfo(state)
            info.since = ts
            if state == "offline" and info.last_online is not None:
                info.since = max(info.last_online, ts) if ts is not None else info.last_online
        info.state, info.ts = state, ts
        if state == "online":
            info.last_online = ts
        outbox = doc.get("outbox")
        # Of the newest message only: a last will, or a heartbeat whose agent could not read its
        # outbox, says nothing of the backlog (its alarm is held as it is).
        info.outbox_reported = isinstance(outbox, dict)
        if isinstance(outbox, dict):
            info.oldest_unsent = _time(outbox.get("oldest_unsent_ts"))
            info.depth = _count(outbox.get("depth"))
            info.unconfirmed = _count(outbox.get("unconfirmed"))
            info.drops = _drops(outbox.get("drops"))
        if "cert_not_after" in doc:
            info.cert_not_after = _time(doc.get("cert_not_after"))
        if isinstance(version := doc.get("agent_version"), str):
            info.agent_version = version[:100]
        interval = doc.get("interval_s")
        if isinstance(interval, int | float) and not isinstance(interval, bool):
            info.interval_s = float(interval) if 0 < interval < math.inf else None
        info.clock_unsynchronised, info.clock_offset_s = _clock(doc.get("clock"))
        self._gateway_info[gateway_id] = info
        return True

    def offer(self, snapshot: Snapshot, now: float, *, checked: bool = False) -> bool:
        """Keep ``snapshot`` unless a newer (or the same) value is held; ``checked``: it comes
        from InfluxDB, asked at ``now``, so the store held nothing newer then. That confirms a
        held value only if the value was there when the question was asked: one that arrived
        while it was out stays unconfirmed."""
        held = self._entries.get(snapshot.charger_id)
        if held is not None and held.snapshot.order >= snapshot.order:
            if checked and held.received <= now:
                held.checked = now
            return False
        if held is None and len(self._entries) >= self._max:
            self.full += 1
            return False
        entry = Entry(snapshot, now, now if checked else NEVER)
        if held is not None:
            step = (snapshot.ts - held.snapshot.ts).total_seconds()
            prior = held.interval_s
            entry.interval_s = step if prior is None else prior + INTERVAL_WEIGHT * (step - prior)
        self._entries[snapshot.charger_id] = entry
        return True

    # -- reading -----------------------------------------------------------------------------
    def get(self, charger_id: str) -> Entry | None:
        return self._entries.get(charger_id)

    def gateway_state(self, gateway_id: str | None) -> str | None:
        return self._gateways.get(gateway_id) if gateway_id is not None else None

    def gateway_info(self) -> dict[str, GatewayInfo]:
        """Every gateway whose retained state was seen, by id (a copy of the mapping)."""
        return dict(self._gateway_info)

    def entries(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def settled(self, before: float) -> list[tuple[str, Entry]]:
        """Entries whose value arrived before the monotonic time ``before``."""
        return [(c, e) for c, e in self._entries.items() if e.received < before]

    def snapshots(self) -> list[Snapshot]:
        return [e.snapshot for e in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)
