"""Dead letters as the processor stores them and the API lists and replays them (pure).

A dead letter is one point of measurement ``deadletters`` (docs/design.md#dead-letters); its
key is (time in nanoseconds, tag ``reason``, tag ``gateway_id``), and its **id** is that key,
``base64url("{ns}.{reason}.{gateway_id}")`` without padding: stable (the same point has the
same id on every API process), opaque to clients, and made only of allow-listed characters
(``A-Za-z0-9_-``), so it may go into a URL path, an MQTT user property or a log line as it is.
An id is decoded and every part checked again before it reaches InfluxQL or line protocol.

A replay is an ordinary ReadingBatch published on ``{root}/replay/{gateway_id}/readings`` (a
topic only the API may write) with the MQTT 5 user property ``replay-of`` = the dead letter's
id; after its commit the processor writes ``replayed_at`` and ``replay_outcome`` (``stored`` or
``deadlettered:<reason>``) onto the dead letter's own point.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from telemetry_common.errors import TelemetryError
from telemetry_common.ids import ID_PATTERN

#: The MQTT 5 user property that marks a replayed message.
REPLAY_PROPERTY: Final = "replay-of"
#: ``replay_outcome`` of a replay whose readings were all stored.
OUTCOME_STORED: Final = "stored"
#: ``replay_outcome`` prefix of a replay that was refused again (``deadlettered:<reason>``).
OUTCOME_DEADLETTERED: Final = "deadlettered:"

#: The shape of an id on the wire (checked before decoding).
ID_SHAPE: Final = r"^[A-Za-z0-9_-]{8,200}$"
_ID_SHAPE: Final = re.compile(ID_SHAPE)
#: A reason as the processor writes them (processor/validate.py): the one definition, used by the
#: API's filters, the InfluxQL builders and the id decoder.
REASON_PATTERN: Final = r"^[a-z][a-z0-9_]{0,63}$"
REASON_RE: Final = re.compile(REASON_PATTERN)
_GATEWAY: Final = re.compile(ID_PATTERN)


class DeadLetterIdError(TelemetryError, ValueError):
    """Text that is not the id of a dead letter."""

    def __init__(self, value: str, problem: str) -> None:
        super().__init__(f"not a dead-letter id ({problem}): {value[:80]!r}")
        self.value = value
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DeadLetterKey:
    """What identifies a dead letter's point: its time (ns) and its two tags."""

    ns: int
    reason: str
    gateway_id: str

    @property
    def id(self) -> str:
        return encode_id(self)


def encode_id(key: DeadLetterKey) -> str:
    """The id of the dead letter stored at ``key``."""
    text = f"{key.ns}.{key.reason}.{key.gateway_id}".encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


def decode_id(value: str) -> DeadLetterKey:
    """The key of the dead letter ``value`` names; :class:`DeadLetterIdError` if it names none
    (each part checked: an integer time, a reason's shape, an allow-listed gateway id)."""
    if not isinstance(value, str) or not _ID_SHAPE.fullmatch(value):
        raise DeadLetterIdError(str(value), "expected base64url characters")
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
    except (binascii.Error, ValueError) as exc:
        raise DeadLetterIdError(value, "not base64url") from exc
    ns_text, _, rest = text.partition(".")
    reason, _, gateway_id = rest.partition(".")
    if not ns_text.isdigit() or len(ns_text) > 19:
        raise DeadLetterIdError(value, "no time")
    if not REASON_RE.fullmatch(reason) or not _GATEWAY.fullmatch(gateway_id):
        raise DeadLetterIdError(value, "no reason or gateway")
    key = DeadLetterKey(int(ns_text), reason, gateway_id)
    if encode_id(key) != value:  # one spelling per dead letter (no leading zeros, no padding)
        raise DeadLetterIdError(value, "not in its canonical form")
    return key


def outcome_deadlettered(reason: str) -> str:
    return f"{OUTCOME_DEADLETTERED}{reason}"
