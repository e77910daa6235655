"""Edge pieces without a broker: outbox durability rules, payloads, simulator, jsonl."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from edge_agent.agent import build_payload
from edge_agent.capture import Capture
from edge_agent.cli import _refusal
from edge_agent.jsonl import LineError, parse_line, read_jsonl
from edge_agent.outbox import Outbox
from edge_agent.simulator import Simulator
from telemetry_common.errors import ConfigError
from telemetry_common.schema import ReadingBatch

TS = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def cap(n: int) -> bytes:
    return Capture("CP-1", TS, {"energy_wh": float(n)}, status="Charging").to_body()


def test_outbox_seq_is_monotonic_across_restarts_and_purge(tmp_path: Path) -> None:
    """seq never goes back or repeats: not after delete, purge or reopening the file."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        first = box.append([cap(1), cap(2)])
        box.delete(first)
        box.append([cap(3)])
        assert box.purge() == 1
    with Outbox(path) as box:
        [again] = box.append([cap(4)])
        assert first == [1, 2]
        assert again == 4
        assert box.stats().last_seq_assigned == 4


def test_outbox_oldest_respects_count_and_bytes(tmp_path: Path) -> None:
    """Batches are oldest-first and bounded by rows and by bytes (at least one row)."""
    with Outbox(tmp_path / "o.sqlite3") as box:
        box.append([cap(i) for i in range(10)])
        assert [r.seq for r in box.oldest(3, 1 << 20)] == [1, 2, 3]
        one = len(cap(0)) + 32
        assert len(box.oldest(10, one * 2)) == 2
        assert len(box.oldest(10, 1)) == 1


def test_parked_rows_leave_pending_but_are_kept(tmp_path: Path) -> None:
    """A refused batch is moved aside with its reason, not deleted."""
    with Outbox(tmp_path / "o.sqlite3") as box:
        seqs = box.append([cap(1), cap(2)])
        box.park(seqs[:1], "Not authorized")
        st = box.stats()
        assert (st.pending, st.parked) == (1, 1)


def test_payload_is_a_valid_reading_batch(tmp_path: Path) -> None:
    """The spliced payload validates against the shared schema with the outbox's seq."""
    with Outbox(tmp_path / "o.sqlite3") as box:
        box.append([cap(10), cap(11)])
        batch = ReadingBatch.model_validate_json(build_payload("gw-1", box.oldest(10, 1 << 20)))
    assert batch.gateway_id == "gw-1"
    assert [(r.seq, r.values["energy_wh"]) for r in batch.readings] == [(1, 10.0), (2, 11.0)]


def test_capture_with_invalid_value_is_refused_at_the_edge() -> None:
    """The edge refuses what the cloud would dead-letter, before it is stored."""
    with pytest.raises(ValueError, match="finite"):
        Capture("CP-1", TS, {"power_w": float("nan")}).to_body()


def test_simulator_energy_is_monotonic_and_values_valid() -> None:
    """Over a simulated hour every reading validates, energy never decreases, power is bounded."""
    sim = Simulator("gw-1", 3, seed=7)
    last: dict[str, float] = {}
    statuses: set[str] = set()
    for step in range(3600):
        for c in sim.sample(datetime.fromtimestamp(1.7e9 + step, UTC), 1.0):
            c.to_body()
            statuses.add(str(c.status))
            e = c.values["energy_wh"]
            assert e >= last.get(c.charger_id, 0.0)
            last[c.charger_id] = e
            assert 0.0 <= c.values["power_w"] <= 22_000.0
    assert {"Available", "Preparing", "Charging", "Finishing"} <= statuses
    assert sim.charger_ids == ["gw-1-cp001", "gw-1-cp002", "gw-1-cp003"]


def test_jsonl_line_normalises_units_and_reports_bad_lines() -> None:
    """kWh/kW become Wh/W; a bad line names its number and problem."""
    values = {"energy_kwh": 1.5, "power_kw": 7}
    line = orjson.dumps({"charger_id": "CP-1", "ts": "2026-05-01T12:00:00Z", "values": values})
    c = parse_line(line, 1)
    assert c.values == {"energy_wh": 1500.0, "power_w": 7000.0}
    with pytest.raises(LineError, match="line 3: missing 'ts'"):
        parse_line(b'{"charger_id":"CP-1","values":{}}', 3)
    with pytest.raises(LineError, match="line 4: not JSON"):
        parse_line(b"{", 4)


async def test_jsonl_stream_skips_bad_lines_and_keeps_the_rest() -> None:
    """A bad line in the middle of a stream costs only that line."""
    good = {"charger_id": "CP-1", "ts": "2026-05-01T12:00:00Z", "values": {"power_w": 1}}
    data = b"\n".join([orjson.dumps(good), b"garbage", b"", orjson.dumps(good)]) + b"\n"
    got = [c async for batch in read_jsonl(io.BytesIO(data)) for c in batch]
    assert len(got) == 2


def test_a_configuration_error_raised_inside_the_agents_tasks_is_a_refusal() -> None:
    """A source's ConfigError comes out of the agent's TaskGroup wrapped in a group: the CLI
    still answers it with its message (exit 2), not a traceback; any other error is not one."""
    err = ConfigError("ocpp.id_tag_salt", "bad")
    assert _refusal(ExceptionGroup("tasks", [ExceptionGroup("inner", [err])])) is err
    assert _refusal(ExceptionGroup("tasks", [err, RuntimeError("bug")])) is None
    assert _refusal(ExceptionGroup("tasks", [RuntimeError("bug")])) is None
