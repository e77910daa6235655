"""The contract every InfluxDB writer back end keeps (telemetry_common/influx_write.py), run
against real servers: v1 ``/write`` against InfluxDB 1.x always; v2 through influxdb-client
against InfluxDB 2.7 in a container when ``TELEMETRY_TEST_DOCKER=1`` and a Docker engine is
reachable (otherwise that half is skipped with the reason)."""

from __future__ import annotations

import gc
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from processor.lineproto import to_lines, ts_ns, ts_ns_all, value_fields_from_json
from telemetry_common.influx_write import (
    InfluxWriter,
    Writer,
    WriteRejectedError,
    WriteUnavailableError,
    make_writer,
)
from telemetry_common.schema import ROWS_VALIDATOR, Reading
from telemetry_common.settings import InfluxSettings
from telemetry_stack.servers import free_port
from tests.support.fixtures import InfluxInfo

pytestmark = pytest.mark.integration

V2_IMAGE = "influxdb:2.7"
V2_TOKEN = "contract-test-token"


@dataclass(frozen=True)
class Backend:
    settings: InfluxSettings
    #: InfluxQL over /query works on both (v2 through its DBRP mapping of the bucket).
    query_headers: dict[str, str]


@pytest.fixture(scope="module")
def v2_server() -> Iterator[str]:
    if os.environ.get("TELEMETRY_TEST_DOCKER") != "1":
        pytest.skip(
            "v2 writer needs InfluxDB 2.x: set TELEMETRY_TEST_DOCKER=1 with a Docker engine"
        )
    from testcontainers.core.container import DockerContainer  # only with Docker

    container = (
        DockerContainer(V2_IMAGE)
        .with_env("DOCKER_INFLUXDB_INIT_MODE", "setup")
        .with_env("DOCKER_INFLUXDB_INIT_USERNAME", "admin")
        .with_env("DOCKER_INFLUXDB_INIT_PASSWORD", "contract-test-password")
        .with_env("DOCKER_INFLUXDB_INIT_ORG", "telemetry")
        .with_env("DOCKER_INFLUXDB_INIT_BUCKET", "telemetry")
        .with_env("DOCKER_INFLUXDB_INIT_ADMIN_TOKEN", V2_TOKEN)
        .with_exposed_ports(8086)
    )
    try:
        container.start()
    except Exception as exc:
        pytest.skip(f"TELEMETRY_TEST_DOCKER=1 but {V2_IMAGE} could not start: {exc}")
    try:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8086)}"
        yield url
    finally:
        container.stop()


@pytest.fixture(params=["v1", "v2"])
def backend(request: pytest.FixtureRequest, influxd: InfluxInfo) -> Backend:
    if request.param == "v1":
        db = f"contract_{uuid.uuid4().hex[:8]}"
        settings = InfluxSettings(url=influxd.url, api="v1", database=db)
        return Backend(settings, {})
    url = request.getfixturevalue("v2_server")
    settings = InfluxSettings(
        url=url, api="v2", token=SecretStr(V2_TOKEN), org="telemetry", bucket="telemetry"
    )
    return Backend(settings, {"Authorization": f"Token {V2_TOKEN}"})


@pytest.fixture
async def writer(backend: Backend) -> AsyncIterator[InfluxWriter]:
    async with Writer(backend.settings) as w:
        yield w


def _count(backend: Backend, charger: str) -> int:
    s = backend.settings
    q = f"SELECT count(power_w) FROM readings WHERE charger_id = '{charger}'"
    r = httpx.get(
        f"{s.url}/query", params={"db": s.database, "q": q}, headers=backend.query_headers
    )
    series = r.json()["results"][0].get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


def _stored_x(backend: Backend, charger: str) -> list[float]:
    s = backend.settings
    q = f"SELECT x_w FROM readings WHERE charger_id = '{charger}'"
    r = httpx.get(
        f"{s.url}/query", params={"db": s.database, "q": q}, headers=backend.query_headers
    )
    return [row[1] for row in r.json()["results"][0]["series"][0]["values"]]


def _line(charger: str, seq: int, power: str = "1.5") -> str:
    return (
        f"readings,charger_id={charger},connector_id=1,evse_id=1,gateway_id=gw-c "
        f"power_w={power},seq={seq}i {1_777_636_800_000_000_000 + seq}"
    )


async def test_written_points_are_stored_and_replays_overwrite(
    writer: InfluxWriter, backend: Backend
) -> None:
    """A batch is stored; writing it again stores nothing new (same key = same point)."""
    charger = f"cp-{uuid.uuid4().hex[:6]}"
    lines = [_line(charger, i) for i in range(1, 101)]
    await writer.write(lines)
    await writer.write(lines)
    assert _count(backend, charger) == 100


async def test_type_conflict_is_a_rejection_not_an_outage(
    writer: InfluxWriter, backend: Backend
) -> None:
    """A line whose field type conflicts is WriteRejectedError (split and dead-letter it), never
    WriteUnavailableError (which would retry it forever)."""
    charger = f"cp-{uuid.uuid4().hex[:6]}"
    await writer.write([_line(charger, 1)])
    with pytest.raises(WriteRejectedError) as err:
        await writer.write([_line(charger, 2, power='"text"')])
    assert err.value.status in {400, 422}


async def test_malformed_line_is_a_rejection(writer: InfluxWriter) -> None:
    """Unparsable line protocol is refused as data."""
    with pytest.raises(WriteRejectedError):
        await writer.write(["readings,charger_id=x power_w= 1"])


async def test_unreachable_server_is_unavailable(backend: Backend) -> None:
    """Nothing listening: WriteUnavailableError, so the pipeline retries without acking."""
    dead = backend.settings.model_copy(
        update={"url": f"http://127.0.0.1:{free_port()}", "create_database": False, "timeout_s": 2}
    )
    w = make_writer(dead)
    try:
        with pytest.raises(WriteUnavailableError):
            await w.write([_line("cp-x", 1)])
    finally:
        await w.aclose()


async def test_every_float_the_line_builder_writes_is_stored_exactly(
    writer: InfluxWriter, backend: Backend
) -> None:
    """processor.lineproto writes floats as orjson renders them (``1e-7``, ``5e-324``,
    ``-0.0``, 16 digits): the server parses each form and stores the same double."""
    values = [1e-7, 5e-324, 2.5e-310, -0.0, 1e15, -1e15, 0.1, 123456789.123, 7200.0, 1 / 3]
    charger = f"cp-{uuid.uuid4().hex[:6]}"
    base = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    readings = [
        Reading(charger_id=charger, seq=i, ts=base + timedelta(seconds=i), values={"x_w": v})
        for i, v in enumerate(values, start=1)
    ]
    await writer.write(
        to_lines("gw-c", [dict(r) for r in readings], [ts_ns(r.ts) for r in readings])
    )
    assert _stored_x(backend, charger) == values


#: JSON number forms a gateway may send, as the text they are written to InfluxDB in when the
#: value fields are taken from the payload (lineproto.value_fields_from_json).
JSON_NUMBERS = [
    "7200", "1E5", "1e+5", "1.5e-3", "-0", "-0.0", "0.1", "123.456E-2", "1e15", "-1e15",
    "5e-324", "0.30000000000000004", "12345678901234.5678", "2.5e-310",
]  # fmt: skip


async def test_value_fields_from_the_payload_text_are_stored_as_validated(
    writer: InfluxWriter, backend: Backend
) -> None:
    """Every JSON number form, written as it was sent (no float rendered again), is parsed by
    the server into the same double the schema validated: nothing a gateway may send makes
    InfluxDB refuse a valid reading or store another value."""
    charger = f"cp-{uuid.uuid4().hex[:6]}"
    base = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    text = ",".join(
        f'{{"charger_id":"{charger}","seq":{i},"ts":"{(base + timedelta(seconds=i)).isoformat()}",'
        f'"values":{{"x_w": {number} }}}}'
        for i, number in enumerate(JSON_NUMBERS, start=1)
    )
    payload = f'{{"schema":"charger-telemetry/1","gateway_id":"gw-c","readings":[{text}]}}'
    rows = ROWS_VALIDATOR.validate_json(payload)["readings"]
    fields = value_fields_from_json(payload.encode(), rows)
    assert fields == [f"x_w={n}" for n in JSON_NUMBERS]  # the text itself, not a rendering
    await writer.write(to_lines("gw-c", rows, ts_ns_all(rows), fields))
    assert _stored_x(backend, charger) == [r["values"]["x_w"] for r in rows]


async def test_v1_write_keeps_no_body_alive(influxd: InfluxInfo) -> None:
    """After a 2 MB v1 write returns, its body is freed by reference counting alone (httpx's
    per-request reference cycle does not hold it), so the bridge needs no forced collection
    per batch to keep its memory flat."""
    settings = InfluxSettings(url=influxd.url, api="v1", database=f"c_{uuid.uuid4().hex[:8]}")
    async with Writer(settings) as w:
        lines = [_line(f"cp-{i % 50}", i, "1.25") for i in range(1, 20_001)]
        await w.write(lines[:10])  # the connection and its buffers exist before measuring
        gc.collect()
        gc.disable()
        try:
            tracemalloc.start()
            await w.write(lines)
            held, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            gc.enable()
    assert sum(len(line) + 1 for line in lines) > 2_000_000
    assert held < 500_000, f"{held} bytes still held after the write returned"
