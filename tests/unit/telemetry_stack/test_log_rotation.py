"""The services' logs are bounded: past the size, rotated to ``.log.1`` while the process keeps
writing (a real process writing to the file the supervisor opened in append mode)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from telemetry_stack import supervisor
from telemetry_stack.servers import ManagedProcess
from telemetry_stack.state import ServiceRecord, save_state, set_record
from tests.support.waiting import wait_until

WRITER = (
    "import sys, time\n"
    "while True:\n"
    "    sys.stdout.write('x' * 99 + '\\n'); sys.stdout.flush()\n"
    "    time.sleep(0.001)\n"
)


def test_a_log_past_its_size_is_rotated_and_the_service_keeps_writing_at_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "logs" / "chatty.log"
    proc = ManagedProcess("chatty", [sys.executable, "-c", WRITER], log_file=log)
    proc.start()
    try:
        rec = ServiceRecord(proc.pid, proc.argv, str(log))
        state: dict[str, object] = {}
        set_record(state, "chatty", rec)
        save_state(tmp_path, state)
        wait_until("100 KB written", lambda: log.stat().st_size > 100_000, 20)
        assert supervisor.rotate_logs(tmp_path, max_bytes=50_000) == [str(log)]
        old = log.with_name("chatty.log.1")
        assert old.stat().st_size > 100_000
        time.sleep(0.3)
        size = log.stat().st_size
        assert 0 < size < 100_000  # written on from the new start, not from the old offset
        assert log.read_bytes()[:100] == b"x" * 99 + b"\n"
        assert supervisor.rotate_logs(tmp_path, max_bytes=10**9) == []
    finally:
        proc.stop()
