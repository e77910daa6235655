"""OCPP-J framing: a WebSocket text frame -> a CALL, or the CALLERROR that answers a bad frame.

The ``ocpp`` library only logs a frame it cannot parse; a charger then waits for an answer until
its timeout. Here every bad frame that could be a request is answered:

- not JSON, not an array, no readable MessageTypeId: ``FormationViolation`` with MessageId
  ``"-1"`` (OCPP 1.6 leaves this case open; ``"-1"`` is the convention OCPP 2.0.1 wrote down);
- a CALL whose UniqueId is readable but whose other elements are wrong: ``FormationViolation``
  with that UniqueId;
- an unknown MessageTypeId: ``FormationViolation`` (with the UniqueId when it is a string).

Answers from the charger (CALLRESULT / CALLERROR) are never answered: the gateway sends no
requests, so they are logged and dropped. Error codes use the OCPP 1.6 spelling
(``FormationViolation``, ``OccurenceConstraintViolation``), which the library's schema validation
does not (it raises the 2.0.1 ``FormatViolation``): :func:`error_code_16` translates, and
:func:`error_code_201` the other way for a 2.0.1 session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from edge_agent.ocpp.lib import Call, CallError, OCPPError

CALL, CALLRESULT, CALLERROR = 2, 3, 4
UNREADABLE_ID = "-1"
MAX_UNIQUE_ID = 36  # OCPP-J: the UniqueId is a string of at most 36 characters

_TO_16 = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}


_TO_201 = {v: k for k, v in _TO_16.items()}


def error_code_16(code: str) -> str:
    return _TO_16.get(code, code)


def error_code_201(code: str) -> str:
    """2.0.1's spelling (``FormatViolation``, ``OccurrenceConstraintViolation``)."""
    return _TO_201.get(code, code)


class FrameError(ValueError):
    """A frame that cannot be processed; ``to_json`` is the CALLERROR to send back."""

    def __init__(self, unique_id: str, cause: str, code: str = "FormationViolation") -> None:
        super().__init__(f"{code}: {cause}")
        self.unique_id = unique_id
        self.cause = cause
        self.code = code

    def to_json(self, spell: Callable[[str], str] = error_code_16) -> str:
        description = "Frame is syntactically incorrect or not conform the OCPP-J structure"
        code = spell(self.code)
        return str(CallError(self.unique_id, code, description, {"cause": self.cause}).to_json())


@dataclass(frozen=True, slots=True)
class Response:
    """A CALLRESULT or CALLERROR from the charger (never answered)."""

    message_type_id: int
    unique_id: str


def call_error_json(
    unique_id: str, error: OCPPError, spell: Callable[[str], str] = error_code_16
) -> str:
    """The CALLERROR for a failed CALL, its code spelled for the version (1.6 by default)."""
    details = error.details if isinstance(error.details, dict) else {}
    safe = {k: v for k, v in details.items() if isinstance(v, str | int | float | bool)}
    return str(CallError(unique_id, spell(error.code), error.description, safe).to_json())


def parse_frame(raw: str | bytes) -> Call | Response:
    """Decode one frame strictly (orjson: no NaN, no duplicate trickery); raise FrameError."""
    try:
        msg: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(UNREADABLE_ID, f"not JSON: {exc}") from exc
    if not isinstance(msg, list) or not msg:
        raise FrameError(UNREADABLE_ID, "an OCPP-J message is a non-empty JSON array")
    type_id = msg[0]
    unique_id = msg[1] if len(msg) > 1 and _valid_id(msg[1]) else None
    if not isinstance(type_id, int) or isinstance(type_id, bool):
        raise FrameError(unique_id or UNREADABLE_ID, "MessageTypeId is not an integer")
    if type_id in (CALLRESULT, CALLERROR):
        return Response(type_id, unique_id or UNREADABLE_ID)
    if type_id != CALL:
        raise FrameError(unique_id or UNREADABLE_ID, f"unknown MessageTypeId {type_id}")
    if unique_id is None:
        raise FrameError(UNREADABLE_ID, "UniqueId must be a string of 1-36 characters")
    if len(msg) != 4:
        raise FrameError(unique_id, f"a CALL has 4 elements, not {len(msg)}")
    action, payload = msg[2], msg[3]
    if not isinstance(action, str) or not action:
        raise FrameError(unique_id, "Action must be a non-empty string")
    if not isinstance(payload, dict):
        raise FrameError(unique_id, "Payload must be a JSON object")
    return Call(unique_id, action, payload)


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_UNIQUE_ID
