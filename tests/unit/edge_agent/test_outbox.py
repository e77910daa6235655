"""The outbox without a broker: the budget policy, disk full, and recovery after a killed
writer, a torn WAL or a damaged file."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_agent.budget import Budget
from edge_agent.outbox import Outbox
from tests.support.outbox_readings import energy, other, pending_seqs


def check_totals(path: Path) -> None:
    """The running totals equal what a full scan finds."""
    with sqlite3.connect(path) as db:
        scan = db.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox").fetchone()
        totals = db.execute("SELECT rows, bytes FROM totals").fetchone()
    assert totals == scan


def test_row_budget_drops_oldest_non_energy_first_then_oldest_energy(tmp_path: Path) -> None:
    """Over max_rows, the oldest non-energy readings go first; with none left, a new
    non-energy capture is the one dropped, and energy readings go last, oldest first. Each drop
    is counted under its reason."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path, Budget(max_rows=6)) as box:
        e1, n1, e2, n2, e3, n3 = box.append(
            [energy(1), other(1), energy(2), other(2), energy(3), other(3)]
        )
        assert pending_seqs(box) == [e1, n1, e2, n2, e3, n3]  # exactly full: nothing dropped
        [e4, e5] = box.append([energy(4), energy(5)])
        assert pending_seqs(box) == [e1, e2, e3, n3, e4, e5]  # n1, n2: oldest non-energy
        [n4] = box.append([other(4)])
        assert pending_seqs(box) == [e1, e2, e3, e4, e5, n4]  # n3 went, the newer n4 stays
        [e6, e7] = box.append([energy(6), energy(7)])
        assert pending_seqs(box) == [e2, e3, e4, e5, e6, e7]  # n4, then the oldest energy e1
        [n5] = box.append([other(5)])
        assert n5 > e7
        assert pending_seqs(box) == [e2, e3, e4, e5, e6, e7]  # refused in effect: n5 dropped
        st = box.stats()
        assert st.dropped == {"budget_non_energy": 5, "budget_energy": 1}
        assert st.pending == 6
    check_totals(path)


def test_byte_budget_counts_reading_bytes(tmp_path: Path) -> None:
    """max_bytes bounds the stored reading bytes with the same policy: energy readings stay."""
    size = len(energy(1))
    assert len(other(1)) < size
    with Outbox(tmp_path / "o.sqlite3", Budget(max_bytes=10 * size)) as box:
        kept = box.append([energy(i) for i in range(5)])
        box.append([other(i) for i in range(20)])
        st = box.stats()
        assert st.pending_bytes <= 10 * size
        assert set(kept) <= set(pending_seqs(box))
        assert st.dropped.get("budget_energy", 0) == 0
        assert st.dropped["budget_non_energy"] == 25 - st.pending
    check_totals(tmp_path / "o.sqlite3")


def test_parked_rows_are_bounded_oldest_first(tmp_path: Path) -> None:
    """Parked rows are kept up to max_parked_rows; beyond, the oldest parked are dropped and
    counted as parked_overflow."""
    with Outbox(tmp_path / "o.sqlite3", Budget(max_parked_rows=3)) as box:
        seqs = box.append([energy(i) for i in range(5)])
        assert box.park(seqs, "Not authorized") == 5
        st = box.stats()
        assert (st.pending, st.parked, st.dropped) == (0, 3, {"parked_overflow": 2})
        assert [s for s, _, _ in box.parked_rows(10)] == seqs[2:]


def test_disk_full_never_raises_and_keeps_energy_readings(tmp_path: Path) -> None:
    """A file that cannot grow (SQLITE_FULL, as on ENOSPC) never makes append raise: room is
    made by the budget rule (non-energy first, oldest first), every reading is accounted for,
    and the outbox keeps accepting captures."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_file_bytes=192 * 1024) as box:
        energy_seqs: list[int] = []
        other_seqs: list[int] = []
        accepted = 0
        for i in range(120):  # ~30k readings, far more than 192 KiB holds
            batch = [energy(i * 10 + k) if k % 4 == 0 else other(i * 10 + k) for k in range(250)]
            seqs = box.append(batch)
            accepted += len(seqs)
            energy_seqs += seqs[0::4]
            other_seqs += [s for k, s in enumerate(seqs) if k % 4]
        st = box.stats()
        assert st.disk_full
        assert st.dropped.get("disk_full_non_energy", 0) > 0
        refused = st.dropped.get("disk_full_refused", 0)
        lost = sum(n for reason, n in st.dropped.items() if reason != "disk_full_refused")
        assert accepted + refused == 120 * 250
        assert st.pending == accepted - lost
        left = set(pending_seqs(box))
        # Oldest first within each kind: what is left of each kind is its newest part.
        kept_energy = [s for s in energy_seqs if s in left]
        assert kept_energy == energy_seqs[len(energy_seqs) - len(kept_energy) :]
        kept_other = [s for s in other_seqs if s in left]
        assert kept_other == other_seqs[len(other_seqs) - len(kept_other) :]
        assert len(kept_energy) > len(kept_other)
        assert box.append([energy(0)])  # still accepting
    check_totals(path)


_WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from edge_agent.capture import Capture
    from edge_agent.outbox import Outbox
    body = Capture("CP-1", datetime.now(UTC), {"energy_wh": 1.0}).to_body()
    with Outbox(Path(sys.argv[1])) as box:
        for _ in range(100_000):
            seqs = box.append([body] * 50)
            print(seqs[-1], flush=True)
    """
)


@pytest.mark.parametrize("round_", range(3))
def test_killed_writer_loses_nothing_it_acknowledged(tmp_path: Path, round_: int) -> None:
    """SIGKILL a process in the middle of appending: on reopen every seq whose append returned
    is there, the database is intact, and seq continues above them."""
    path = tmp_path / "o.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        acked = [int(proc.stdout.readline()) for _ in range(20 + 15 * round_)]
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().split()
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    acked += [int(x) for x in rest]
    with Outbox(path) as box:
        assert box.recovered is None
        have = set(pending_seqs(box))
        assert set(range(1, acked[-1] + 1)) <= have
        [nxt] = box.append([energy(1)])
        assert nxt > max(have)
    check_totals(path)


def _snapshot(box: Outbox, into: Path) -> Path:
    """Copy the database and its WAL as they are on disk now (what a power cut leaves)."""
    into.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{box.path}{suffix}", into / f"o.sqlite3{suffix}")
    return into / "o.sqlite3"


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_torn_wal_tail_is_discarded_and_the_rest_kept(tmp_path: Path, damage: str) -> None:
    """A WAL whose last transaction was torn (cut short, or its frames overwritten) opens
    without error: every earlier transaction is there, the torn one is not."""
    with Outbox(tmp_path / "live.sqlite3") as box:
        first = box.append([energy(i) for i in range(20)])
        wal = Path(f"{box.path}-wal")
        good_size = wal.stat().st_size
        box.append([energy(i) for i in range(20, 40)])
        assert wal.stat().st_size > good_size  # not checkpointed in between
        copy = _snapshot(box, tmp_path / "copy")
    copy_wal = Path(f"{copy}-wal")
    with copy_wal.open("r+b") as fh:
        if damage == "truncate":
            fh.truncate(good_size + 700)  # half of the next transaction's first frame
        else:
            fh.seek(good_size + 24)
            fh.write(os.urandom(2048))
    with Outbox(copy) as box:
        assert box.recovered is None
        assert pending_seqs(box) == first
        assert box.stats().last_seq_assigned == first[-1]
    check_totals(copy)


def test_damaged_file_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    """A damaged database does not crash the agent: the file is kept aside, readable rows are
    copied into a fresh outbox, and seq continues above every seq the old file gave, under the
    old file's epoch (pages of rows are damaged; its counter and epoch are readable)."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        box.append([energy(i) for i in range(3000)])
        last = box.stats().last_seq_assigned
        epoch = box.epoch
    with path.open("r+b") as fh:
        fh.seek(4096 * 40)
        fh.write(b"\xff" * 4096 * 4)
    with Outbox(path) as box:
        assert box.recovered is not None
        salvaged = box.stats().pending
        assert 0 < salvaged < 3000
        assert box.epoch == epoch
        [nxt] = box.append([energy(0)])
        assert nxt == last + 1
    assert list(tmp_path.glob("o.sqlite3.corrupt-*"))
    check_totals(path)


def test_a_file_that_is_not_a_database_is_replaced(tmp_path: Path) -> None:
    """Garbage in place of the outbox: kept aside, a fresh outbox starts at seq 1 with a new
    epoch (the old numbering cannot be read, so a new one begins, as the cloud is told)."""
    path = tmp_path / "o.sqlite3"
    path.write_bytes(os.urandom(10_000))
    with Outbox(path) as box:
        assert box.recovered is not None
        assert "new epoch" in box.recovered
        assert box.append([energy(1)]) == [1]


def test_totals_are_shared_with_a_second_process(tmp_path: Path) -> None:
    """Stats read by another connection (the operator CLI) match the agent's writes."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as agent, Outbox(path) as cli:
        agent.append([energy(i) for i in range(10)])
        agent.delete(pending_seqs(agent)[:4])
        assert cli.stats().pending == 6
        assert cli.purge() == 6
        assert agent.stats().pending == 0
        assert agent.stats().dropped == {"purged": 6}
        time.sleep(0)  # nothing else pending
    check_totals(path)
