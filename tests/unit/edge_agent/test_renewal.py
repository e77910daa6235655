"""Renewal's schedule and its failure path: due once within RENEW_BEFORE_DAYS; an API that does
not answer is retried with backoff, counted and logged at WARNING with what to do, and the
certificate in place is kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from edge_agent import enroll
from edge_agent.heartbeat import GatewayState
from edge_agent.renewal import Renewal
from edge_agent.settings import EdgeSettings
from provisioning import enrollment, pki
from telemetry_common.mqtt import AsyncMqttClient
from telemetry_common.settings import MqttSettings
from telemetry_stack.servers import free_port


def _enrolled(tmp_path: Path, days: float) -> MqttSettings:
    made = pki.init(tmp_path / "pki")
    key = enroll.make_key()
    signed = enrollment.sign_csr(made.dir, enroll.make_csr(key, "gw-1"), "gw-1", days=days)
    crt, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    enroll.install_pair(key, signed.cert, crt, key_file)
    return MqttSettings(ca_file=made.ca_file, cert_file=crt, key_file=key_file)


def _settings(mqtt: MqttSettings, url: str, before_days: float) -> EdgeSettings:
    return EdgeSettings(
        gateway_id="gw-1",
        mqtt=mqtt,
        enrollment_url=url,
        renew_before_days=before_days,
        renew_check_s=0.05,
    )


def test_renewal_is_due_within_the_margin(tmp_path: Path) -> None:
    mqtt = _enrolled(tmp_path, days=40)
    gateway = GatewayState(None, mqtt.cert_file)
    client = cast(AsyncMqttClient, None)  # never reached: nothing is due or renewed here
    now = datetime.now(UTC)
    due = Renewal(_settings(mqtt, "https://api.example", 30), client, gateway).due_in(now)
    assert due is not None
    assert timedelta(days=9.9) < due < timedelta(days=10)
    late = Renewal(_settings(mqtt, "https://api.example", 50), client, gateway).due_in(now)
    assert late is not None
    assert late < timedelta(0)


def test_a_failed_renewal_is_retried_counted_logged_and_keeps_the_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mqtt = _enrolled(tmp_path, days=1)
    before = mqtt.cert_file.read_bytes()
    gateway = GatewayState(None, mqtt.cert_file)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    renewal = Renewal(_settings(mqtt, nobody, 30), cast(AsyncMqttClient, None), gateway)

    async def run_a_while() -> None:
        task = asyncio.create_task(renewal.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if renewal.stats.failures >= 3:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="edge_agent.renewal"):
        asyncio.run(run_a_while())
    assert renewal.stats.failures >= 3
    assert renewal.stats.renewals == 0
    warning = caplog.records[0]
    assert warning.levelno == logging.WARNING
    assert "certificate renewal failed" in warning.getMessage()
    assert "TELEMETRY_EDGE_ENROLLMENT_URL" in warning.getMessage()
    assert mqtt.cert_file.read_bytes() == before
    assert not list(tmp_path.glob("*.next"))


def test_an_unexpected_error_does_not_end_renewal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of a kind renewal does not expect (a bug, an answer it cannot parse) is logged
    with its traceback and retried like any failure: the task must not end quietly, leaving the
    gateway to go dark on the day the certificate expires."""
    mqtt = _enrolled(tmp_path, days=1)
    gateway = GatewayState(None, mqtt.cert_file)
    renewal = Renewal(
        _settings(mqtt, "https://api.example", 30), cast(AsyncMqttClient, None), gateway
    )

    def broken(*args: object, **kwargs: object) -> object:
        raise KeyError("certificate")  # not EnrollError, ConfigError or OSError

    monkeypatch.setattr(enroll, "renew", broken)
    monkeypatch.setattr("edge_agent.renewal.FIRST_RETRY_S", 0.01)

    async def run_a_while() -> bool:
        task = asyncio.create_task(renewal.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if renewal.stats.failures >= 2 or task.done():
                break
        ended = task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, KeyError):
            await task
        return ended

    with caplog.at_level(logging.WARNING, logger="edge_agent.renewal"):
        ended = asyncio.run(run_a_while())
    assert not ended
    assert renewal.stats.failures >= 2
    assert any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
