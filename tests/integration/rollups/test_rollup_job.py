"""The rollup job against a real InfluxDB 1.x: 40 days of readings rolled up, raw readings past
their retention dropped, the rollups equal to aggregates computed independently from the raw
data; late readings inside LOOKBACK picked up; a restart resuming from the saved progress."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processor.outputs.late import late_lines
from rollups import retention
from rollups.job import RollupJob
from rollups.settings import RollupsInfluxSettings, RollupsSettings
from telemetry_common.influx_query import InfluxQLClient
from telemetry_common.influx_write import Writer
from telemetry_common.settings import env_for
from tests.support import rollup_data
from tests.support.fixtures import InfluxTarget
from tests.support.influx import influxql

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)


@pytest.fixture(params=["into", "lines"])
def write_path(request: pytest.FixtureRequest) -> str:
    """Both ways of writing the buckets on InfluxDB 1.x: ``SELECT ... INTO`` (its default) and
    the rows read and written as line protocol (the path of 2.x/3.x)."""
    return str(request.param)


def _rollups(db: InfluxTarget, rp: str, measurement: str) -> rollup_data.Points:
    return rollup_data.stored(db.url, db.database, rp, measurement)


def _assert_field_types(db: InfluxTarget, rp: str, measurement: str) -> None:
    """``count`` and each key's ``_count`` integer fields and ``status_last`` a string, as the
    readers expect; every other aggregate a float."""
    q = f'SHOW FIELD KEYS FROM "{db.database}"."{rp}"."{measurement}"'
    types = dict(influxql(db.url, db.database, q))
    assert types.pop("count") == "integer"
    assert types.pop("status_last") == "string"
    counts = {k: types.pop(k) for k in [k for k in types if k.endswith("_count")]}
    assert counts, "no key counts"
    assert set(counts.values()) == {"integer"}, counts
    assert types, "no aggregates"
    assert set(types.values()) == {"float"}, types


def _settings(db: InfluxTarget, write_path: str, **more: object) -> RollupsSettings:
    return RollupsSettings(
        influx=RollupsInfluxSettings(url=db.url, database=db.database),
        http_port=0,
        write_path=write_path,
        **more,  # type: ignore[arg-type]
    )


def _run_cli(db: InfluxTarget, write_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = env_for(
        RollupsSettings,
        influx={"url": db.url, "database": db.database},
        http_port=0,
        raw_shard_duration="1h",
        log_format="text",
        write_path=write_path,
    )
    return subprocess.run(
        [str(BIN / "telemetry-rollups"), *args],
        env={"PATH": str(BIN), **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_forty_days_rolled_up_then_raw_beyond_thirty_days_dropped(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """40 days of readings of four series (several per minute in one hour a day, a sparse key,
    readings without status): one pass of ``telemetry-rollups --once`` writes every 1-minute
    and 1-hour bucket with data, equal to aggregates computed here from the generated raw
    readings; then the raw retention of 30 days is in force and InfluxDB drops the older raw
    readings, while the rollups stay complete."""
    now = datetime.now(UTC)
    start = (now - timedelta(days=40)).replace(minute=0, second=0, microsecond=0)
    readings = rollup_data.generate(start, now - 5 * MINUTE)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)

    done = _run_cli(rollup_db, write_path, "--once")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"written by the {write_path} path" in done.stdout + done.stderr

    # Only complete hours are rolled up: the current one is not over yet.
    open_hour = now.replace(minute=0, second=0, microsecond=0)
    want_1m = rollup_data.expected(readings, MINUTE)
    want_1h = {
        k: v
        for k, v in rollup_data.expected(readings, HOUR).items()
        if k[-1] < rollup_data.ns(open_hour)
    }
    policies = {
        row[0]: row[1]
        for row in influxql(
            rollup_db.url, rollup_db.database, f'SHOW RETENTION POLICIES ON "{rollup_db.database}"'
        )
    }
    assert policies == {"autogen": "720h0m0s", "rollup_1m": "8760h0m0s", "rollup_1h": "43800h0m0s"}

    # Retention: the raw readings older than 30 days (their 1-hour shard groups) go.
    cutoff = now - timedelta(days=30) - HOUR
    old = f"SELECT count(seq) FROM readings WHERE time < '{cutoff.isoformat()}'"
    deadline = time.monotonic() + 60
    while influxql(rollup_db.url, rollup_db.database, old) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert influxql(rollup_db.url, rollup_db.database, old) == []
    kept = influxql(rollup_db.url, rollup_db.database, "SELECT count(seq) FROM readings")[0][1]
    recent = sum(1 for r in readings if r.ts >= now - timedelta(days=30))
    assert recent <= kept < len(readings)

    rollup_data.assert_matches(_rollups(rollup_db, "rollup_1m", "readings_1m"), want_1m)
    rollup_data.assert_matches(_rollups(rollup_db, "rollup_1h", "readings_1h"), want_1h)
    assert len(want_1m) > 40 * 24 * 4  # the comparison covered the 40 days, every series
    _assert_field_types(rollup_db, "rollup_1m", "readings_1m")
    _assert_field_types(rollup_db, "rollup_1h", "readings_1h")


async def test_late_readings_within_lookback_are_rolled_up_by_the_next_pass(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """A reading stored after its minute was rolled up, inside LOOKBACK, is in the next pass's
    rollups (minute and hour); one older than LOOKBACK is not, until ``backfill`` recomputes
    its range."""
    now = datetime(2026, 12, 5, 12, 30, 20, tzinfo=UTC)
    readings = rollup_data.generate(now - 6 * HOUR, now - 2 * MINUTE)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    clock = [now]
    settings = _settings(rollup_db, write_path, lookback="2h", settle_s=60, late_check_every="1m")
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await retention.ensure_rollup_policies(client, settings)
        job = RollupJob(settings, client, writer, now=lambda: clock[0])
        first = await job.run_pass()
        assert first.caught_up
        assert first.done_until == datetime(2026, 12, 5, 12, 29, tzinfo=UTC)

        series = rollup_data.SERIES[0]
        inside = rollup_data.Raw(
            series,
            now - 50 * MINUTE + timedelta(seconds=1),
            10**6,
            "Faulted",
            # Numbers whose shortest form has an exponent (2e+16, 1.5e-7) go through too.
            {"power_w": 1e6, "energy_wh": 2e16, "soc_pct": 1.5e-7},
        )
        outside = rollup_data.Raw(
            series, now - 3 * HOUR + timedelta(seconds=1), 10**6 + 1, None, {"power_w": -5.0}
        )
        late = [inside, outside]
        rollup_data.write(rollup_db.url, rollup_db.database, late)
        clock[0] = now + MINUTE
        second = await job.run_pass()
        assert second.late_series == 1

        all_readings = readings + late
        got_1m = _rollups(rollup_db, "rollup_1m", "readings_1m")
        want_1m = rollup_data.expected(all_readings, MINUTE)
        key_in = (*series, rollup_data.ns(inside.ts.replace(second=0, microsecond=0)))
        key_out = (*series, rollup_data.ns(outside.ts.replace(second=0, microsecond=0)))
        assert got_1m[key_in] == pytest.approx(want_1m[key_in])
        assert got_1m[key_in]["power_w_max"] == 1e6
        assert got_1m.get(key_out) != want_1m[key_out]  # older than LOOKBACK: not seen
        hour_in = (*series, rollup_data.ns(inside.ts.replace(minute=0, second=0, microsecond=0)))
        got_1h = _rollups(rollup_db, "rollup_1h", "readings_1h")
        assert got_1h[hour_in]["power_w_max"] == 1e6

        fixed = await job.backfill(outside.ts - HOUR, outside.ts + MINUTE)
        assert fixed.written["1m"] > 0
        got_1m = _rollups(rollup_db, "rollup_1m", "readings_1m")
        want_1h = {
            k: v
            for k, v in rollup_data.expected(all_readings, HOUR).items()
            if k[-1] < rollup_data.ns(datetime(2026, 12, 5, 12, tzinfo=UTC))
        }
        rollup_data.assert_matches(got_1m, {k: v for k, v in want_1m.items()})
        rollup_data.assert_matches(_rollups(rollup_db, "rollup_1h", "readings_1h"), want_1h)


async def test_readings_stored_hours_late_are_rolled_up_from_the_bridges_marks(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """A backlog drained (or a dead letter replayed) hours late lies behind LOOKBACK: the bridge
    that stores it writes a ``rollup_late`` mark (processor/outputs/late.py) and the next pass
    recomputes the marked range, minutes and hours; a mark read again changes nothing; a
    restarted job resumes after the marks it took."""
    now = datetime(2026, 12, 5, 12, 30, 20, tzinfo=UTC)
    readings = rollup_data.generate(now - 8 * HOUR, now - 2 * MINUTE)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    clock = [now]
    # (marks are taken with the LOOKBACK check: here at every pass)
    settings = _settings(rollup_db, write_path, lookback="2h", settle_s=60, late_check_every="1m")
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await retention.ensure_rollup_policies(client, settings)
        job = RollupJob(settings, client, writer, now=lambda: clock[0])
        assert (await job.run_pass()).caught_up

        series = rollup_data.SERIES[1]
        backlog = [
            rollup_data.Raw(series, now - 5 * HOUR + k * MINUTE + timedelta(seconds=7),
                            2 * 10**6 + k, "Charging", {"power_w": 9000.0 + k})
            for k in range(3)
        ]  # fmt: skip
        rollup_data.write(rollup_db.url, rollup_db.database, backlog)
        clock[0] = now + MINUTE
        stamp = rollup_data.ns(clock[0])
        marks = late_lines(
            [(series[1], [rollup_data.ns(r.ts) for r in backlog])], stamp, bridge="bridge-a"
        )
        assert len(marks) == 1
        await writer.write(marks)  # as the bridge does, beside the readings it stored
        second = await job.run_pass()
        assert second.late_marked == 1
        assert second.late_series == 0  # behind LOOKBACK: only the mark finds them

        every = readings + backlog
        settled = rollup_data.ns(datetime(2026, 12, 5, 12, 30, tzinfo=UTC))
        hours = rollup_data.ns(datetime(2026, 12, 5, 12, tzinfo=UTC))
        want_1m = {k: v for k, v in rollup_data.expected(every, MINUTE).items() if k[-1] < settled}
        want_1h = {k: v for k, v in rollup_data.expected(every, HOUR).items() if k[-1] < hours}
        rollup_data.assert_matches(_rollups(rollup_db, "rollup_1m", "readings_1m"), want_1m)
        rollup_data.assert_matches(_rollups(rollup_db, "rollup_1h", "readings_1h"), want_1h)

        clock[0] = now + 2 * MINUTE
        assert (await job.run_pass()).late_marked == 0  # the mark is taken once
        # A restarted job reads the marks' watermark back: a mark within MARKS_MARGIN of it may
        # be recomputed once more (the same points again), none older.
        restarted = RollupJob(settings, client, writer, now=lambda: clock[0])
        clock[0] = now + 3 * MINUTE
        assert (await restarted.run_pass()).late_marked <= 1
        clock[0] = now + 4 * MINUTE
        assert (await restarted.run_pass()).late_marked == 0
        rollup_data.assert_matches(_rollups(rollup_db, "rollup_1h", "readings_1h"), want_1h)


async def test_late_readings_are_checked_every_late_check_every_over_lookback_before_the_last(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """With LATE_CHECK_EVERY 10m the passes between two checks leave late readings alone; the
    next check finds them, also one whose minute left LOOKBACK since the previous check."""
    now = datetime(2026, 12, 5, 12, 30, 20, tzinfo=UTC)
    readings = rollup_data.generate(now - 3 * HOUR, now - 2 * MINUTE, burst_hour=-1)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    clock = [now]
    settings = _settings(rollup_db, write_path, lookback="1h", settle_s=60)
    assert settings.late_check_every == "10m"
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await retention.ensure_rollup_policies(client, settings)
        job = RollupJob(settings, client, writer, now=lambda: clock[0])
        await job.run_pass()  # checks (the first pass of a process)
        series = rollup_data.SERIES[1]
        # 58 minutes old now, 67 at the next check: outside LOOKBACK by then.
        late = rollup_data.Raw(series, now - 58 * MINUTE, 10**6, None, {"power_w": 1e6})
        rollup_data.write(rollup_db.url, rollup_db.database, [late])
        for minutes in range(1, 10):
            clock[0] = now + minutes * MINUTE
            assert (await job.run_pass()).late_series == 0
        clock[0] = now + 10 * MINUTE
        assert (await job.run_pass()).late_series == 1
    key = (*series, rollup_data.ns(late.ts.replace(second=0, microsecond=0)))
    got = _rollups(rollup_db, "rollup_1m", "readings_1m")
    assert got[key] == pytest.approx(rollup_data.expected([*readings, late], MINUTE)[key])


async def test_a_restarted_job_resumes_from_its_saved_progress(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """The progress is stored in InfluxDB (``rollup_state``): a new job (a restart) continues
    from it and does not recompute the buckets before LOOKBACK (deleted here, they stay
    deleted), while it rolls up what came since."""
    now = datetime(2026, 12, 5, 18, 0, 30, tzinfo=UTC)
    readings = rollup_data.generate(now - 10 * HOUR, now + 3 * HOUR)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    settings = _settings(rollup_db, write_path, lookback="2h", settle_s=0)
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await retention.ensure_rollup_policies(client, settings)
        first = await RollupJob(settings, client, writer, now=lambda: now).run_pass()
        assert first.done_until == datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
        before = rollup_data.ns(now - 5 * HOUR)
        influxql(
            rollup_db.url, rollup_db.database, f"DELETE FROM readings_1m WHERE time < {before}"
        )

        later = now + 2 * HOUR
        restarted = RollupJob(settings, client, writer, now=lambda: later)
        assert await restarted.load_progress() == first.done_until
        second = await restarted.run_pass()
    assert first.done_until is not None
    assert second.done_until == datetime(2026, 12, 5, 20, 0, tzinfo=UTC)
    assert second.late_series == 0
    got = _rollups(rollup_db, "rollup_1m", "readings_1m")
    want = rollup_data.expected([r for r in readings if r.ts < later.replace(second=0)], MINUTE)
    assert all(k[-1] >= before for k in got)  # the deleted old buckets were not redone
    rollup_data.assert_matches(got, {k: v for k, v in want.items() if k[-1] >= before})
    assert second.written["1m"] == sum(1 for k in want if rollup_data.ns(first.done_until) <= k[-1])


async def test_buckets_older_than_a_rollup_policy_are_left_out_not_refused(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """Raw readings older than the 1-minute rollups' retention (raw readings may be up to 366
    days old, 1-minute rollups are kept 365): the pass succeeds, writes the 1-minute buckets
    InfluxDB still takes and every 1-hour bucket."""
    now = datetime.now(UTC)
    readings = rollup_data.generate(now - timedelta(days=2), now - 5 * MINUTE, burst_hour=-1)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    settings = _settings(
        rollup_db, write_path, rollup_1m_retention="1d", rollup_1m_shard_duration="1h", settle_s=0
    )
    async with InfluxQLClient(settings.influx) as client, Writer(settings.influx) as writer:
        await retention.ensure_rollup_policies(client, settings)
        result = await RollupJob(settings, client, writer).run_pass()
    assert result.caught_up
    oldest = rollup_data.ns(now - timedelta(days=1) + HOUR)
    got_1m = _rollups(rollup_db, "rollup_1m", "readings_1m")
    want_1m = {k: v for k, v in rollup_data.expected(readings, MINUTE).items() if k[-1] >= oldest}
    # The minute at the edge may or may not be in, depending on the second the pass ran.
    edge = {k for k in want_1m if k[-1] < oldest + 60 * 10**9}
    rollup_data.assert_matches(
        {k: v for k, v in got_1m.items() if k not in edge},
        {k: v for k, v in want_1m.items() if k not in edge},
    )
    open_hour = rollup_data.ns(now.replace(minute=0, second=0, microsecond=0))
    want_1h = {k: v for k, v in rollup_data.expected(readings, HOUR).items() if k[-1] < open_hour}
    rollup_data.assert_matches(_rollups(rollup_db, "rollup_1h", "readings_1h"), want_1h)


def test_backfill_command_recomputes_only_the_range_given(
    rollup_db: InfluxTarget, write_path: str
) -> None:
    """``telemetry-rollups backfill --start --end`` writes the complete buckets of that range
    (every minute, the hour it covers) and nothing else, and leaves the progress alone."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 4 * HOUR
    readings = rollup_data.generate(hour - HOUR, hour + 2 * HOUR, burst_hour=hour.hour)
    rollup_data.write(rollup_db.url, rollup_db.database, readings)
    # Policies that exist with other durations (infinite) are altered to the settings.
    for policy in ("rollup_1m", "rollup_1h"):
        influxql(
            rollup_db.url,
            rollup_db.database,
            f'CREATE RETENTION POLICY "{policy}" ON "{rollup_db.database}" DURATION 0s '
            "REPLICATION 1",
        )
    done = _run_cli(
        rollup_db,
        write_path,
        "backfill",
        "--start",
        hour.isoformat(),
        "--end",
        (hour + HOUR).isoformat(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"written by the {write_path} path" in done.stdout + done.stderr
    inside = [r for r in readings if hour <= r.ts < hour + HOUR]
    rollup_data.assert_matches(
        _rollups(rollup_db, "rollup_1m", "readings_1m"), rollup_data.expected(inside, MINUTE)
    )
    rollup_data.assert_matches(
        _rollups(rollup_db, "rollup_1h", "readings_1h"), rollup_data.expected(inside, HOUR)
    )
    assert (
        influxql(rollup_db.url, rollup_db.database, 'SELECT * FROM "rollup_1h"."rollup_state"')
        == []
    )
