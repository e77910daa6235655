"""The API's clocks, kept on ``app.state.clock``: wall time (ages, relative windows) and
monotonic time (caches, the trust rule). Routes read them there, so a test pins both by giving
``create_app`` a clock of its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def mono(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def mono(self) -> float:
        return time.monotonic()
