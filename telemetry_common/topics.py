"""Topic builders and parsers for the MQTT topics of docs/design.md, spelled here only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from telemetry_common.errors import TopicError
from telemetry_common.ids import check_id

DEFAULT_ROOT = "chargers/v1"
SHARE_GROUP = "processors"
#: Topic levels under the root that are not gateways: no gateway (certificate CN, ingest key)
#: may be named so, or its own topics (``{gw}/reply/#`` ...) would reach into these trees.
RESERVED_GATEWAY_IDS = frozenset({"live", "deadletter", "alarms", "replay"})


@dataclass(frozen=True, slots=True)
class Topics:
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        parts = self.root.split("/")
        if not self.root or any(not p or p in {"+", "#", "$share"} for p in parts):
            raise TopicError(self.root, "a topic root such as 'chargers/v1'")
        if any(("+" in p or "#" in p) for p in parts):
            raise TopicError(self.root, "a topic root without wildcards")

    def readings(self, gateway_id: str) -> str:
        return f"{self.root}/{check_id('gateway id', gateway_id)}/readings"

    def state(self, gateway_id: str) -> str:
        return f"{self.root}/{check_id('gateway id', gateway_id)}/state"

    def cmd(self, gateway_id: str, name: str) -> str:
        return f"{self.root}/{check_id('gateway id', gateway_id)}/cmd/{check_id('command', name)}"

    def cmd_all(self, gateway_id: str) -> str:
        """The filter a gateway subscribes to for its commands: ``{root}/{gateway}/cmd/+``."""
        return f"{self.root}/{check_id('gateway id', gateway_id)}/cmd/+"

    def command_name(self, gateway_id: str, topic: str) -> str:
        """The ``{name}`` of ``{root}/{gateway}/cmd/{name}``; TopicError otherwise."""
        prefix = f"{self.root}/{check_id('gateway id', gateway_id)}/cmd/"
        if not topic.startswith(prefix):
            raise TopicError(topic, f"{prefix}{{name}}")
        return check_id("command", topic[len(prefix) :])

    def reply(self, gateway_id: str, name: str) -> str:
        """A response topic for commands to ``gateway_id``: ``{root}/{gateway}/reply/{name}``
        (the requester names it in the MQTT 5 Response Topic; the ACL lets the gateway write
        only under its own ``reply/``)."""
        return f"{self.reply_prefix(gateway_id)}{check_id('reply name', name)}"

    def reply_prefix(self, gateway_id: str) -> str:
        return f"{self.root}/{check_id('gateway id', gateway_id)}/reply/"

    def is_reply_topic(self, gateway_id: str, topic: str) -> bool:
        """True if ``topic`` is a concrete topic under the gateway's own ``reply/``."""
        prefix = self.reply_prefix(gateway_id)
        rest = topic[len(prefix) :]
        return (
            topic.startswith(prefix)
            and bool(rest)
            and not any(c in topic for c in "+#\0")
            and "" not in rest.split("/")
        )

    def stored(self, gateway_id: str) -> str:
        """Where the bridges acknowledge what they stored of ``gateway_id``'s readings (the
        end-to-end acknowledgement, docs/design.md#stored-acknowledgements)."""
        return f"{self.root}/{check_id('gateway id', gateway_id)}/stored"

    def live(self, charger_id: str) -> str:
        return f"{self.root}/live/{check_id('charger id', charger_id)}"

    def deadletter(self, gateway_id: str) -> str:
        return f"{self.root}/deadletter/{check_id('gateway id', gateway_id)}"

    def alarm(self, kind: str, subject: str) -> str:
        """``{root}/alarms/{kind}/{subject}``: retained while the alarm is active, cleared by an
        empty retained message (docs/alarms.md)."""
        kind, subject = check_alarm(kind, subject)
        return f"{self.root}/alarms/{kind}/{subject}"

    def all_alarms(self) -> str:
        """The filter of every alarm topic: ``{root}/alarms/+/+``."""
        return f"{self.root}/alarms/+/+"

    def alarm_of(self, topic: str) -> tuple[str, str] | None:
        """``(kind, subject)`` of an alarm topic; None for any other topic."""
        prefix = f"{self.root}/alarms/"
        parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if len(parts) != 2:
            return None
        try:
            return check_alarm(parts[0], parts[1])
        except TopicError:
            return None

    def all_readings(self) -> str:
        return f"{self.root}/+/readings"

    def shared_readings(self, group: str = SHARE_GROUP) -> str:
        return f"$share/{check_id('share group', group)}/{self.all_readings()}"

    def replay(self, gateway_id: str) -> str:
        """Where the API publishes a dead letter of ``gateway_id`` again: only the API may write
        here (ACL), so a gateway cannot pass its own messages off as replays."""
        return f"{self.root}/replay/{check_id('gateway id', gateway_id)}/readings"

    def shared_replays(self, group: str = SHARE_GROUP) -> str:
        return f"$share/{check_id('share group', group)}/{self.root}/replay/+/readings"

    def gateway_of_replay(self, topic: str) -> str | None:
        """The gateway id of a ``{root}/replay/{gateway_id}/readings`` topic; None for any other
        topic; TopicError for a replay topic naming no valid gateway."""
        prefix = self.root + "/replay/"
        if not topic.startswith(prefix) or not topic.endswith("/readings"):
            return None
        gateway_id = topic[len(prefix) : -len("/readings")]
        if "/" in gateway_id or gateway_id in RESERVED_GATEWAY_IDS:
            raise TopicError(topic, f"{prefix}{{gateway_id}}/readings")
        return check_id("gateway id", gateway_id)

    def gateway_of_readings(self, topic: str) -> str:
        """The gateway id of a ``{root}/{gateway_id}/readings`` topic; TopicError otherwise."""
        prefix = self.root + "/"
        if not topic.startswith(prefix) or not topic.endswith("/readings"):
            raise TopicError(topic, f"{prefix}{{gateway_id}}/readings")
        gateway_id = topic[len(prefix) : -len("/readings")]
        if "/" in gateway_id or gateway_id in RESERVED_GATEWAY_IDS:
            raise TopicError(topic, f"{prefix}{{gateway_id}}/readings")
        return check_id("gateway id", gateway_id)


#: The alarm kinds of docs/alarms.md (one topic level each under ``{root}/alarms/``).
ALARM_KINDS: tuple[str, ...] = (
    "charger_silent",
    "connector_faulted",
    "gateway_offline",
    "seq_gap_confirmed",
    "deadletters",
    "edge_backlog",
    "certificate_expiry",
    "gateway_clock",
)
#: An alarm's subject: one topic level of id characters (a connector's is
#: ``{charger}.{evse}.{connector}``, so up to 64 + 8 characters).
ALARM_SUBJECT: re.Pattern[str] = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


def check_alarm(kind: str, subject: str) -> tuple[str, str]:
    """``(kind, subject)`` if both are valid, else TopicError."""
    if kind not in ALARM_KINDS:
        raise TopicError(kind, f"one of {', '.join(ALARM_KINDS)}")
    if not isinstance(subject, str) or not ALARM_SUBJECT.fullmatch(subject):
        raise TopicError(subject, "an alarm subject ([A-Za-z0-9._-]{1,80})")
    return kind, subject
