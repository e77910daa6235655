"""The gateway's clock watch (edge_agent.clock): the kernel's NTP status, the offset from the
bridges' clock as the stored acknowledgements tell it, and readings too old for the cloud."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import struct
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from edge_agent.capture import Capture
from edge_agent.clock import ClockWatch, os_unsynchronised
from edge_agent.heartbeat import online_payload
from edge_agent.metrics import registry_for
from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters
from telemetry_common.stored_ack import encode as ack_payload

STA_UNSYNC = 0x40
#: ``status`` in struct timex (x86_64 and aarch64): after modes (int, padded), offset, freq,
#: maxerror, esterror (longs).
STATUS_OFFSET = 40


class _Conn:
    connects = 1
    connected = True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_os_source_is_the_kernels_unsync_flag() -> None:
    """What ``os_unsynchronised`` says (from adjtimex's return value) agrees with the STA_UNSYNC
    bit of the status the same call fills in, read on its own here."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    buf = ctypes.create_string_buffer(512)
    assert libc.adjtimex(buf) >= 0
    (status,) = struct.unpack_from("i", buf.raw, STATUS_OFFSET)
    assert os_unsynchronised() is bool(status & STA_UNSYNC)


def test_no_acknowledgement_with_ts_says_nothing() -> None:
    watch = ClockWatch(60, timedelta(days=30), os_status=lambda: None)
    assert watch.unsynchronised() == {"os": None, "cloud": None}
    watch.observe_ack(b'{"epoch": null, "seqs": [[1, 1]]}')  # an older bridge: no ts
    assert watch.offset_s() is None


def test_the_smallest_offset_of_the_window_counts() -> None:
    """An accurate bridge: offset about 0 (the transit), not unsynchronised. An acknowledgement
    that waited 1,000 s in the broker does not make the clock look ahead while a fresh one is in
    the window; alone, it does (the agent cannot tell). One stamped 400 s ahead of this clock:
    behind, for certain."""
    watch = ClockWatch(60, timedelta(days=30), os_status=lambda: False)
    watch.observe_ack(ack_payload(None, [1]))
    offset = watch.offset_s()
    assert offset is not None
    assert 0 <= offset < 1
    stale = datetime.now(UTC) - timedelta(seconds=1000)
    watch.observe_ack(ack_payload(None, [2], ts=stale))
    assert watch.unsynchronised() == {"os": False, "cloud": False}

    alone = ClockWatch(60, timedelta(days=30), os_status=lambda: False)
    alone.observe_ack(ack_payload(None, [2], ts=stale))
    assert alone.cloud_unsynchronised() is True

    behind = ClockWatch(60, timedelta(days=30), os_status=lambda: False)
    behind.observe_ack(ack_payload(None, [3], ts=datetime.now(UTC) + timedelta(seconds=400)))
    offset = behind.offset_s()
    assert offset is not None
    assert -400.5 < offset < -399
    assert behind.cloud_unsynchronised() is True


def _cap(ts: datetime) -> Capture:
    return Capture("CP-1", ts, {"energy_wh": 1.0})


def test_readings_older_than_max_age_are_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    watch = ClockWatch(60, timedelta(days=30), os_status=lambda: None)
    with caplog.at_level(logging.WARNING, logger="edge_agent.clock"):
        old = [_cap(datetime(1970, 1, 1, tzinfo=UTC)), _cap(now - timedelta(days=31))]
        assert watch.check_ages([*old, _cap(now - timedelta(days=29))], now) == 2
        assert watch.check_ages([_cap(datetime(2000, 1, 1, tzinfo=UTC))], now) == 1
        assert watch.check_ages([_cap(now)], now) == 0
    assert watch.too_old == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("2 readings captured stamped more than 30 days")
    assert "1970-01-01" in warnings[0]


def test_heartbeat_and_metrics_carry_the_clock(tmp_path: Path) -> None:
    watch = ClockWatch(60, timedelta(days=30), os_status=lambda: True)
    watch.observe_ack(ack_payload(None, [1], ts=datetime.now(UTC) + timedelta(seconds=400)))
    doc = orjson.loads(online_payload(version="1", clock=watch))
    assert doc["clock"]["unsynchronised"] == {"os": True, "cloud": True}
    assert -400.5 < doc["clock"]["offset_s"] < -399
    assert "clock" not in orjson.loads(online_payload(version="1"))
    with Outbox(tmp_path / "o.sqlite3") as box:
        registry = registry_for(box, Counters(), _Conn(), clock=watch)
        name = "telemetry_edge_clock_unsynchronised"
        assert registry.get_sample_value(name, {"source": "os"}) == 1.0
        assert registry.get_sample_value(name, {"source": "cloud"}) == 1.0
        assert registry.get_sample_value("telemetry_edge_readings_too_old_total") == 0.0
        unknown = ClockWatch(60, timedelta(days=30), os_status=lambda: None)
        registry = registry_for(box, Counters(), _Conn(), clock=unknown)
        assert registry.get_sample_value(name, {"source": "os"}) is None
        assert registry.get_sample_value("telemetry_edge_clock_offset_seconds") is None
