"""InfluxDB 1.x retention policies as ``SHOW RETENTION POLICIES`` reports them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

_GO_DURATION: Final = re.compile(r"(\d+)(h|m|s)")
_GO_UNITS: Final = {"h": 3600, "m": 60, "s": 1}


def go_duration(text: str) -> timedelta | None:
    """InfluxDB's ``720h0m0s`` as a timedelta; ``0s`` (infinite) as None."""
    seconds = sum(int(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))
    return None if seconds == 0 else timedelta(seconds=seconds)
