"""The outbox's epoch (made once, kept, migrated, and what salvage does with it), the seq
ceiling (2^53-1), and unique ts per series at capture."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import orjson
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.capture import Capture
from edge_agent.outbox import Outbox
from edge_agent.series import UniqueTs
from edge_agent.settings import EdgeSettings
from edge_agent.store import salvage
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.schema import EPOCH_SHAPE, MAX_SEQ
from tests.support.outbox_readings import TS, energy, pending_seqs

MS = timedelta(milliseconds=1)


def test_an_outbox_has_one_epoch_for_its_life_and_a_new_file_a_new_one(tmp_path: Path) -> None:
    """The epoch is made with the file (16 hex digits) and kept across opens; the outbox
    deleted and created again has another epoch and numbers from 1 again."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        first = box.epoch
        assert re.fullmatch(EPOCH_SHAPE, first)
        assert box.append([energy(1), energy(2)]) == [1, 2]
    with Outbox(path) as box:
        assert box.epoch == first
        assert box.append([energy(3)]) == [3]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Outbox(path) as box:
        assert re.fullmatch(EPOCH_SHAPE, box.epoch)
        assert box.epoch != first
        assert box.append([energy(4)]) == [1]


def test_an_outbox_from_before_epochs_gets_one_and_its_seqs_go_on(tmp_path: Path) -> None:
    """A file written by an agent that knew no epoch (no ``meta`` table) is given an epoch when
    opened; its pending rows and its seq counter are kept."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        box.append([energy(i) for i in range(5)])
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE meta")
        db.execute("DROP TABLE series_ts")
    with Outbox(path) as box:
        assert re.fullmatch(EPOCH_SHAPE, box.epoch)
        assert pending_seqs(box) == [1, 2, 3, 4, 5]
        assert box.append([energy(6)]) == [6]


def test_salvage_keeps_the_epoch_when_the_numbering_goes_on(tmp_path: Path) -> None:
    """A damaged outbox whose seq counter and epoch can be read: the fresh one keeps both."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        epoch = box.epoch
        box.append([energy(i) for i in range(10)])
        box.delete([1, 2, 3])
    salvage(path, "test")[0].close()
    with Outbox(path) as box:
        assert box.epoch == epoch
        assert pending_seqs(box) == list(range(4, 11))
        assert box.append([energy(0)]) == [11]


def test_salvage_without_the_seq_counter_numbers_again_under_a_new_epoch(tmp_path: Path) -> None:
    """The old seq counter is unreadable: the salvaged rows are numbered 1..n in their order
    under a new epoch (no seq is skipped, none reused within the epoch)."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        epoch = box.epoch
        box.append([energy(i) for i in range(10)])
        box.delete([1, 2, 3])
        bodies = [r.body for r in box.oldest(100, 1 << 20)]
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM sqlite_sequence")
    salvage(path, "test")[0].close()
    with Outbox(path) as box:
        assert box.epoch != epoch
        assert pending_seqs(box) == list(range(1, 8))
        assert [r.body for r in box.oldest(100, 1 << 20)] == bodies
        assert box.append([energy(0)]) == [8]


def test_no_seq_beyond_2_53_is_handed_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At 2^53-1 the outbox refuses new captures (the cloud would refuse their seqs), counts
    them and says what to do; nothing above 2^53-1 is ever stored, so none is published."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        box.append([energy(0)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (MAX_SEQ - 2,))
    with Outbox(path) as box, caplog.at_level(logging.ERROR):
        assert box.append([energy(1)]) == [MAX_SEQ - 1]
        assert box.append([energy(2), energy(3)]) == []
        assert box.append([energy(4)]) == [MAX_SEQ]
        assert box.append([energy(5)]) == []
        assert max(pending_seqs(box)) == MAX_SEQ
        assert box.stats().dropped == {"seq_exhausted_refused": 3}
    assert "new epoch and numbers from 1" in caplog.text


def cap(ts_ms: int, connector: int = 1, charger: str = "CP-1") -> Capture:
    return Capture(charger, TS + ts_ms * MS, {"power_w": 1.0}, connector_id=connector)


def offsets(captures: list[Capture]) -> list[int]:
    return [(c.ts - TS) // MS for c in captures]


def test_a_ts_equal_to_the_last_of_its_series_is_moved_past_it() -> None:
    """T, T, T becomes T, T+1, T+2 ms; a capture inside that span (T+1) goes past it (T+3); a
    later one is kept; another connector or charger has its own series; an older ts is left
    alone (a late reading keeps its time)."""
    unique = UniqueTs({})
    out, marks = unique.apply([cap(0), cap(0), cap(0), cap(1), cap(10), cap(0, connector=2)])
    assert offsets(out) == [0, 1, 2, 3, 10, 0]
    base = int(TS.timestamp()) * 1000
    assert marks == {("CP-1", 1, 1): (base + 10, base + 10), ("CP-1", 1, 2): (base, base)}
    out, _ = unique.apply([cap(10), cap(5), cap(10, charger="CP-2")])
    assert offsets(out) == [11, 5, 10]


async def test_capture_keeps_ts_unique_per_series_across_a_restart(tmp_path: Path) -> None:
    """Through the agent's capture: two captures of one connector with the same ts are stored
    with distinct ts, and so is one with that ts again after the agent (and its outbox) were
    started anew; each got its own seq."""
    settings = EdgeSettings(gateway_id="gw-1", outbox_path=tmp_path / "o.sqlite3")
    client = cast(AsyncMqttClient, SimpleNamespace(connected=False))

    async def source(*batches: list[Capture]) -> AsyncIterator[list[Capture]]:
        for b in batches:
            yield b

    with Outbox(settings.outbox_path) as box:
        await EdgeAgent(settings, box, client).capture(source([cap(0)], [cap(0)]))
    with Outbox(settings.outbox_path) as box:
        await EdgeAgent(settings, box, client).capture(source([cap(0), cap(7)]))
        rows = box.oldest(100, 1 << 20)
    stamps = [orjson.loads(r.reading_json())["ts"] for r in rows]
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert stamps == [
        "2026-05-01T12:00:00.000Z",
        "2026-05-01T12:00:00.001Z",
        "2026-05-01T12:00:00.002Z",
        "2026-05-01T12:00:00.007Z",
    ]
