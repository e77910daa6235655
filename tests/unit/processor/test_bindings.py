"""Charger bindings: the provisioned loader (file, store, both), first-come as the dev option."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processor.state.bindings import Bindings, load_bindings
from processor.state.storage import load_bindings_store, refresh_bindings_forever
from telemetry_common.errors import ConfigError
from telemetry_common.influx_query import InfluxQueryError, Series
from tests.support.fake_influx import FakeInflux


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bindings.json"
    path.write_text(text)
    return path


def test_provisioned_is_the_default_and_refuses_a_charger_bound_nowhere(tmp_path: Path) -> None:
    """Without a file or a store entry, no charger is accepted (``""``: bound to none)."""
    b = load_bindings(None)
    assert b.provisioned
    assert b.mode == "provisioned"
    assert b.claim("gw-1", "cp-1") == ""
    assert b.claim("gw-1", "cp-1") == ""  # and it does not bind itself
    assert len(b) == 0


def test_the_file_binds_its_pairs_only(tmp_path: Path) -> None:
    """A file's charger is accepted from its gateway, refused from another (named); others are
    refused."""
    b = load_bindings(_file(tmp_path, '{"cp-1": "gw-1"}'))
    assert b.claim("gw-1", "cp-1") is None
    assert b.claim("gw-2", "cp-1") == "gw-1"
    assert b.claim("gw-1", "cp-2") == ""


def test_the_store_binds_moves_and_unbinds() -> None:
    """Store changes alone: bind, move to another gateway, unbind ("")."""
    b = load_bindings(None)
    assert b.apply({"cp-1": "gw-1"}) == 1
    assert b.claim("gw-1", "cp-1") is None
    assert b.apply({"cp-1": "gw-2"}) == 1
    assert (b.claim("gw-1", "cp-1"), b.claim("gw-2", "cp-1")) == ("gw-2", None)
    assert b.apply({"cp-1": "gw-2"}) == 0  # the same change read again changes nothing
    assert b.apply({"cp-1": ""}) == 1
    assert b.claim("gw-2", "cp-1") == ""
    assert b.status()["from_store"] == 0


def test_the_store_overrides_the_file_for_the_chargers_it_names(tmp_path: Path) -> None:
    """File and store together: the store wins for its chargers (a move, an unbind), the file
    keeps the rest."""
    b = load_bindings(_file(tmp_path, '{"cp-1": "gw-1", "cp-2": "gw-1", "cp-3": "gw-1"}'))
    b.apply({"cp-1": "gw-2", "cp-2": ""})
    assert b.claim("gw-2", "cp-1") is None
    assert b.claim("gw-1", "cp-1") == "gw-2"
    assert b.claim("gw-1", "cp-2") == ""
    assert b.claim("gw-1", "cp-3") is None
    assert b.get("cp-3") == "gw-1"
    assert len(b) == 2
    assert b.status() | {"refreshed_at": None} == {
        "mode": "provisioned",
        "bound": 2,
        "from_file": 3,
        "from_store": 1,
        "learned": 0,
        "refreshed_at": None,
        "refresh_errors": 0,
    }


def test_first_come_binds_the_first_sender_and_a_store_delete_frees_the_charger() -> None:
    """The dev option: the first gateway binds the charger (also when learned at warm-up); the
    store still overrides; a store unbind lets the next sender claim it."""
    b = load_bindings(None, mode="first-come")
    assert b.first_come
    assert not b.provisioned
    b.seed("cp-0", "gw-0")
    assert b.claim("gw-9", "cp-0") == "gw-0"
    assert b.claim("gw-1", "cp-1") is None
    assert b.claim("gw-2", "cp-1") == "gw-1"
    b.apply({"cp-1": "gw-2"})
    assert b.claim("gw-2", "cp-1") is None
    assert b.claim("gw-1", "cp-1") == "gw-2"
    b.apply({"cp-1": ""})
    assert b.claim("gw-3", "cp-1") is None
    assert b.claim("gw-1", "cp-1") == "gw-3"


def test_provisioned_mode_ignores_what_readings_taught() -> None:
    """Warm-up seeds (the gateway of a charger's newest reading) bind nothing when provisioned."""
    b = Bindings({}, first_come=False)
    b.seed("cp-1", "gw-1")
    assert b.claim("gw-1", "cp-1") == ""


@pytest.mark.parametrize(
    "content", ["[1, 2]", "{not json", '{"cp-1": 7}', '{"cp 1": "gw-1"}', '{"cp-1": "gw/1"}']
)
def test_a_file_that_cannot_work_names_the_setting(tmp_path: Path, content: str) -> None:
    """Not a JSON object of allow-listed charger -> gateway ids: ConfigError naming the setting
    and the file."""
    path = _file(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_bindings(path, "TELEMETRY_BRIDGE_BINDINGS_FILE")
    assert err.value.setting == "TELEMETRY_BRIDGE_BINDINGS_FILE"
    assert str(path) in str(err.value)


def test_the_compose_bindings_file_binds_the_simulated_gateways_chargers() -> None:
    """docker/bindings.json (the compose bridge's TELEMETRY_BRIDGE_BINDINGS_FILE) loads, and
    binds gw-1's and gw-2's simulated chargers (up to 10 each) to their own gateway only."""
    path = Path(__file__).resolve().parents[3] / "docker" / "bindings.json"
    b = load_bindings(path)
    for gw in ("gw-1", "gw-2"):
        for n in range(1, 11):
            assert b.claim(gw, f"{gw}-cp{n:03d}") is None
    assert b.claim("gw-2", "gw-1-cp001") == "gw-1"
    assert b.claim("gw-1", "gw-1-cp011") == ""


async def test_a_store_not_read_keeps_the_bindings_and_is_read_whole_next_time() -> None:
    """A refused query is counted and leaves the file's bindings; the next refresh then reads the
    whole store (not only the last minute's changes), and after that only the changes since."""
    fake = FakeInflux()
    fake.answers = [
        InfluxQueryError("unsupported"),
        [Series("bindings", ["time", "gateway_id"], [[1, "gw-2"]], {"charger_id": "cp-1"})],
    ]
    b = Bindings({"cp-1": "gw-1"}, first_come=False)
    assert not await load_bindings_store(b, fake, None)
    assert (b.refresh_errors, b.refreshed_at, b.get("cp-1")) == (1, None, "gw-1")
    task = asyncio.create_task(refresh_bindings_forever(b, fake, 0.01))
    try:
        for _ in range(200):
            if len(fake.queries) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert "WHERE" not in fake.queries[1]
    assert "WHERE time > " in fake.queries[2]
    assert b.get("cp-1") == "gw-2"


async def test_a_change_stamped_by_a_clock_far_behind_is_applied_at_a_full_reread() -> None:
    """An API clock more than BINDINGS_CLOCK_MARGIN behind the bridge's stamps a change older
    than any incremental refresh asks for: every ``full_every``-th refresh reads the whole store,
    so the change is applied within full_every x the refresh period."""
    queries: list[str] = []
    whole = [Series("bindings", ["time", "gateway_id"], [[1, "gw-2"]], {"charger_id": "cp-1"})]

    class Store:
        async def query(self, q: str) -> list[Series]:
            queries.append(q)
            return [] if "WHERE time > " in q else whole  # the change is too old for a window

        async def query_stream(
            self, q: str, *, chunk_size: int = 1000
        ) -> AsyncIterator[list[Series]]:
            yield await self.query(q)

        async def query_chunked(self, q: str) -> list[Series]:
            return await self.query(q)

    b = Bindings({"cp-1": "gw-1"}, first_come=False)
    b.refreshed_at = 1_777_636_800.0  # loaded once already: refreshes ask for a window
    task = asyncio.create_task(refresh_bindings_forever(b, Store(), 0.001, full_every=3))
    try:
        for _ in range(500):
            if len(queries) >= 3:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
    assert ["WHERE time > " in q for q in queries[:3]] == [True, True, False]
    assert b.get("cp-1") == "gw-2"
