"""An InfluxDB 1.x of the rollup tests' own: its retention service checks every second (influxd's
default is 30 minutes), so a test sees expired shard groups dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from telemetry_stack.servers import ServerBinaryMissing, free_port, start_influxd
from tests.support.fixtures import InfluxInfo, InfluxTarget


@pytest.fixture(scope="module")
def fast_retention_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxInfo]:
    port = free_port()
    try:
        proc = start_influxd(
            tmp_path_factory.mktemp("influxd-retention"), port, retention_check_interval="1s"
        )
    except ServerBinaryMissing as exc:
        pytest.skip(str(exc))
    try:
        yield InfluxInfo(url=f"http://127.0.0.1:{port}")
    finally:
        proc.stop()


def _statement(url: str, q: str) -> None:
    body = httpx.post(f"{url}/query", data={"q": q}, timeout=30).json()
    assert not any("error" in r for r in body.get("results", [])), body


@pytest.fixture
def rollup_db(fast_retention_influxd: InfluxInfo) -> Iterator[InfluxTarget]:
    """A fresh database whose default policy ``autogen`` has 1-hour shard groups (InfluxDB drops
    whole shard groups, so raw readings go at most an hour after their retention ends)."""
    url = fast_retention_influxd.url
    database = f"rollups_{uuid.uuid4().hex[:10]}"
    _statement(url, f'CREATE DATABASE "{database}" WITH SHARD DURATION 1h NAME "autogen"')
    try:
        yield InfluxTarget(url=url, database=database)
    finally:
        _statement(url, f'DROP DATABASE "{database}"')
