"""``/v1/bindings`` as an app (create_app + a fake InfluxQL client + a recording writer): the
store's newest change per charger, first-come's learned bindings, paging, the lines a change
writes, and who may do what. Against real servers: tests/integration/bridge/test_bindings.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from query_api.app import create_app
from query_api.routes import bindings as bindings_routes
from query_api.settings import ApiSettings
from telemetry_common.errors import ConfigError
from telemetry_common.influx_query import InfluxQueryError, Series
from tests.support.fake_influx import FakeInflux

READ, ADMIN = "read-key-0123456789", "admin-key-0123456"
NS = 1_777_636_800_000_000_000  # 2026-05-01T12:00:00Z


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[tuple[list[str], str | None]] = []

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        self.writes.append((list(lines), rp))

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _store(*rows: tuple[str, str, str]) -> list[Series]:
    """An answer of bindings_query: (charger, gateway, previous) per charger."""
    columns = ["time", "gateway_id", "previous", "changed_by"]
    return [
        Series("bindings", columns, [[NS, gw, prev, "api:admin"]], {"charger_id": c})
        for c, gw, prev in rows
    ]


def _readings(*rows: tuple[str, str, int]) -> list[Series]:
    """An answer of newest_per_charger_query: (charger, gateway, time) per pair."""
    return [
        Series("readings", ["time", "seq"], [[t, 1]], {"charger_id": c, "gateway_id": g})
        for c, g, t in rows
    ]


async def _app(
    fake: FakeInflux, writer: RecordingWriter, mode: Literal["provisioned", "first-come"]
) -> AsyncIterator[FastAPI]:
    settings = ApiSettings(
        keys={"read": SecretStr(READ), "admin": SecretStr(ADMIN)},
        latest_sweep_s=0,
        bindings=mode,
    )
    app = create_app(settings, influx=fake, writer=writer)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def fake() -> FakeInflux:
    return FakeInflux()


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


def _client(app: FastAPI, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-Key": key},
    )


async def test_provisioned_lists_the_store_only_paged_and_filtered(
    fake: FakeInflux, writer: RecordingWriter
) -> None:
    """Unbound chargers ("") are left out; pages follow the charger id; a gateway filter keeps
    its chargers; a single charger the store does not bind is 404."""
    store = _store(("cp-3", "gw-1", ""), ("cp-1", "gw-1", "gw-0"), ("cp-2", "", "gw-1"))
    store += _store(("cp-4", "gw-2", ""))
    fake.answers = [store, store, store, _store(("cp-2", "", "gw-1"))]
    async for app in _app(fake, writer, "provisioned"):
        async with _client(app, READ) as c:
            first = (await c.get("/v1/bindings", params={"limit": 2})).json()
            assert [i["charger_id"] for i in first["items"]] == ["cp-1", "cp-3"]
            assert first["items"][0]["previous"] == "gw-0"
            assert first["items"][0]["changed_at"] == "2026-05-01T12:00:00.000Z"
            page = {"limit": 2, "cursor": first["next_cursor"]}
            second = (await c.get("/v1/bindings", params=page)).json()
            assert [i["charger_id"] for i in second["items"]] == ["cp-4"]
            assert second["next_cursor"] is None
            gw1 = (await c.get("/v1/bindings", params={"gateway_id": "gw-2"})).json()
            assert [i["charger_id"] for i in gw1["items"]] == ["cp-4"]
            missing = await c.get("/v1/bindings/cp-2")
            assert missing.status_code == 404
            assert "not bound" in missing.json()["detail"]
    assert 'GROUP BY "charger_id"' in fake.queries[0]
    assert '"keep"."bindings"' in fake.queries[0]
    assert "'cp-2'" in fake.queries[-1]


async def test_first_come_lists_learned_bindings_the_store_does_not_override(
    fake: FakeInflux, writer: RecordingWriter
) -> None:
    """first-come: each charger's newest reading's gateway, unless the store names it (a move or
    an unbind)."""
    store = _store(("cp-1", "gw-9", "gw-1"), ("cp-2", "", "gw-1"))
    readings = _readings(("cp-1", "gw-1", NS), ("cp-2", "gw-1", NS), ("cp-3", "gw-1", NS))
    # The newest-stored state: two bridges' points of cp-3, the newest (over bridges) names the
    # gateway of its newest reading; the recent window's older point of cp-3 does not win.
    columns = ["time", "bridge", "charger_id", "gateway_id", "seq", "ts"]
    state = [
        Series(
            "newest_chargers",
            columns,
            [[0, "b1", "cp-3", "gw-1", 1, NS], [0, "b2", "cp-3", "gw-2", 2, NS + 1]],
        )
    ]
    fake.answers = [store, state, readings]
    async for app in _app(fake, writer, "first-come"):
        async with _client(app, READ) as c:
            items = (await c.get("/v1/bindings")).json()["items"]
    assert [(i["charger_id"], i["gateway_id"], i["source"]) for i in items] == [
        ("cp-1", "gw-9", "store"),
        ("cp-3", "gw-2", "learned"),
    ]


async def test_put_and_delete_write_one_change_each_to_keep(
    fake: FakeInflux, writer: RecordingWriter
) -> None:
    """PUT writes the new gateway with the previous one, DELETE writes "" (unbound), both to the
    retention policy keep; a store not created yet is read as empty."""
    fake.answers = [
        InfluxQueryError("retention policy not found: keep"),
        _store(("cp-1", "gw-1", "")),
    ]
    async for app in _app(fake, writer, "provisioned"):
        async with _client(app, ADMIN) as c:
            put = await c.put("/v1/bindings/cp-1", json={"gateway_id": "gw-1"})
            assert put.status_code == 200
            assert (put.json()["gateway_id"], put.json()["previous"]) == ("gw-1", None)
            assert (await c.delete("/v1/bindings/cp-1")).status_code == 204
    (put_lines, put_rp), (del_lines, del_rp) = writer.writes
    assert put_rp == del_rp == "keep"
    assert put_lines[0].startswith(
        'bindings,charger_id=cp-1 gateway_id="gw-1",previous="",changed_by="api:admin" '
    )
    assert del_lines[0].startswith('bindings,charger_id=cp-1 gateway_id="",previous="gw-1",')


async def test_only_an_admin_key_changes_and_ids_are_allow_listed(
    fake: FakeInflux, writer: RecordingWriter
) -> None:
    """A read key: 403 on PUT and DELETE (200 on GET); a gateway or charger id outside the
    allow-list, or an extra key in the body: 422; nothing written."""
    async for app in _app(fake, writer, "provisioned"):
        async with _client(app, READ) as reader, _client(app, ADMIN) as admin:
            put = await reader.put("/v1/bindings/cp-1", json={"gateway_id": "gw-1"})
            assert put.status_code == 403
            assert (await reader.delete("/v1/bindings/cp-1")).status_code == 403
            assert (await reader.get("/v1/bindings")).status_code == 200
            for path, body in (
                ("/v1/bindings/cp-1", {"gateway_id": "gw/1"}),
                ("/v1/bindings/cp%201", {"gateway_id": "gw-1"}),
                ("/v1/bindings/cp-1", {"gateway_id": "gw-1", "by": "me"}),
            ):
                assert (await admin.put(path, json=body)).status_code == 422, (path, body)
    assert writer.writes == []


async def test_the_bindings_file_is_listed_under_the_store(
    fake: FakeInflux, writer: RecordingWriter, tmp_path: Path
) -> None:
    """TELEMETRY_API_BINDINGS_FILE (the bridges' file) is listed with source file where the
    store names no charger: a store move or unbind overrides it, as on the bridges."""
    path = tmp_path / "bindings.json"
    path.write_text('{"cp-1": "gw-1", "cp-2": "gw-1", "cp-3": "gw-1"}')
    store = _store(("cp-1", "gw-2", "gw-1"), ("cp-2", "", "gw-1"))
    fake.answers = [store, _store(("cp-2", "", "gw-1")), []]
    settings = ApiSettings(
        keys={"read": SecretStr(READ), "admin": SecretStr(ADMIN)},
        latest_sweep_s=0,
        bindings_file=path,
    )
    app = create_app(settings, influx=fake, writer=writer)
    async with app.router.lifespan_context(app), _client(app, READ) as c:
        items = (await c.get("/v1/bindings")).json()["items"]
        assert [(i["charger_id"], i["gateway_id"], i["source"]) for i in items] == [
            ("cp-1", "gw-2", "store"),
            ("cp-3", "gw-1", "file"),
        ]
        assert (await c.get("/v1/bindings/cp-2")).status_code == 404  # unbound in the store
        one = await c.get("/v1/bindings/cp-3")
        assert (one.status_code, one.json()["source"]) == (200, "file")


def test_a_bindings_file_that_cannot_work_stops_the_api(tmp_path: Path) -> None:
    """The same loader as the bridges': a bad file is a ConfigError naming the API's setting."""
    path = tmp_path / "bindings.json"
    path.write_text('{"cp 1": "gw-1"}')
    settings = ApiSettings(keys={"read": SecretStr(READ)}, bindings_file=path)
    with pytest.raises(ConfigError, match="TELEMETRY_API_BINDINGS_FILE"):
        create_app(settings)


async def test_keep_is_ready_only_once_its_creation_succeeded(
    fake: FakeInflux, writer: RecordingWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change tries to create `keep` again while the start's attempt failed; a failed try is
    not taken for success: the next change tries again."""
    calls: list[str] = []

    async def refuse(settings: object, rp: str, *args: object, **kwargs: object) -> bool:
        calls.append(rp)
        return False

    monkeypatch.setattr(bindings_routes, "create_retention_policy", refuse)
    async for app in _app(fake, writer, "provisioned"):
        async with _client(app, ADMIN) as c:
            for _ in range(2):
                put = await c.put("/v1/bindings/cp-1", json={"gateway_id": "gw-1"})
                assert put.status_code == 200
        assert app.state.keep_rp_ready is False
    assert calls == ["keep", "keep"]
