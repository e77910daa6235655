"""The id allow-list (docs/design.md, guarantee 6), checked before it reaches a topic or a query."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from telemetry_common.errors import InvalidIdError

ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

#: A pydantic type for any charger, gateway or transaction id.
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def is_valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is an allowed id, else raise :class:`InvalidIdError`."""
    if not isinstance(value, str) or not is_valid_id(value):
        raise InvalidIdError(kind, value)
    return value
