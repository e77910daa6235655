"""Fixtures of the integration tests that start pipeline processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start pipeline processes; every one is stopped by PID when the test ends."""
    p = Procs(tmp_path / "logs")
    yield p
    p.stop_all()
