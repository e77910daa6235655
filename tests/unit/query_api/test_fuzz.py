"""A bounded property run of the OpenAPI document (schemathesis): generated requests to every
endpoint, with an admin key, never get a 5xx and every error is a problem document.

InfluxDB, its writer and the broker are fakes here (empty store, a writer that takes all, a
broker that takes every batch and acknowledges it as stored at once): the run is about the HTTP
layer's validation of whatever a client may send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from query_api.acks import StoredAcks
from query_api.app import create_app
from query_api.settings import ApiSettings
from telemetry_common.influx_query import Series

# Test dependencies (dev extra): skipped with the reason when they are not installed.
schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

ADMIN = "admin-key-0123456789"


class EmptyInflux:
    async def query_stream(self, q: str, *, chunk_size: int = 1000) -> AsyncIterator[list[Series]]:
        yield await self.query(q)

    async def query_chunked(self, q: str) -> list[Series]:
        return await self.query(q)

    async def query(self, q: str) -> list[Series]:
        return []


class AcceptingWriter:
    """Takes every write (the bindings store's changes)."""

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        return None

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class AcceptingBroker:
    connected = True
    acks: StoredAcks | None = None

    async def publish(self, topic: str, payload: bytes) -> None:
        body = orjson.loads(payload)
        seqs = [r["seq"] for r in body["readings"]]
        ack = orjson.dumps({"epoch": body["epoch"], "seqs": [[min(seqs), max(seqs)]]})
        assert self.acks is not None
        self.acks.apply(topic.removesuffix("/readings") + "/stored", ack)


broker = AcceptingBroker()
app = create_app(
    ApiSettings(keys={"admin": SecretStr(ADMIN)}),
    influx=EmptyInflux(),
    broker=broker,
    writer=AcceptingWriter(),
)
broker.acks = app.state.acks
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()  # type: ignore[untyped-decorator]  # importorskip gives Any
@hypothesis.settings(  # type: ignore[untyped-decorator]  # imported through importorskip
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_request_gets_a_server_error(case: Any) -> None:
    """Whatever the parameters, the answer is below 500; errors are problem+json."""
    response = case.call(headers={"X-API-Key": ADMIN})
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json")
