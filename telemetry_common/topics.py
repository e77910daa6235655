"""Topic builders and parsers for the MQTT topics of docs/design.md, spelled here only."""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_common.errors import TopicError
from telemetry_common.ids import check_id

DEFAULT_ROOT = "chargers/v1"
SHARE_GROUP = "processors"


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

    def all_readings(self) -> str:
        return f"{self.root}/+/readings"

    def shared_readings(self, group: str = SHARE_GROUP) -> str:
        return f"$share/{check_id('share group', group)}/{self.all_readings()}"

    def gateway_of_readings(self, topic: str) -> str:
        """The gateway id of a ``{root}/{gateway_id}/readings`` topic; TopicError otherwise."""
        prefix = self.root + "/"
        if not topic.startswith(prefix) or not topic.endswith("/readings"):
            raise TopicError(topic, f"{prefix}{{gateway_id}}/readings")
        gateway_id = topic[len(prefix) : -len("/readings")]
        if "/" in gateway_id or gateway_id in {"live", "deadletter"}:
            raise TopicError(topic, f"{prefix}{{gateway_id}}/readings")
        return check_id("gateway id", gateway_id)
