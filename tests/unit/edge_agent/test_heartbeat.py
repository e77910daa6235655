"""The gateway's state document (birth / heartbeat / last will) and the certificate-expiry metric,
without a broker: an outbox on disk and a certificate signed by a throw-away CA."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from edge_agent.budget import Budget
from edge_agent.capture import Capture
from edge_agent.heartbeat import (
    GatewayState,
    agent_version,
    cert_not_after,
    online_payload,
    state_payload,
)
from edge_agent.metrics import registry_for
from edge_agent.outbox import Outbox
from edge_agent.publisher import Counters
from provisioning import pki as pki_mod
from tests.support.forged_certs import sign_with_ca

TS = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def cap(n: int) -> bytes:
    return Capture("CP-1", TS, {"energy_wh": float(n)}, status="Charging").to_body()


@pytest.fixture
def short_cert(tmp_path: Path) -> tuple[Path, datetime]:
    """A client certificate valid until 3 days from now (to the second)."""
    pki_mod.init(tmp_path / "pki")
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    crt, _key = sign_with_ca(
        tmp_path / "pki", tmp_path / "certs", "gw-1", not_after - timedelta(days=10), not_after
    )
    return crt, not_after


class _Conn:
    connects = 1
    connected = True


def test_offline_payload_is_state_and_ts_only() -> None:
    """The last will keeps its old shape: exactly ``state`` and ``ts`` (so does the birth of a
    session without gateway state, ``outbox drain``'s)."""
    now = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
    doc = orjson.loads(state_payload("offline", now=now))
    assert doc == {"state": "offline", "ts": "2026-12-05T18:00:00+00:00"}
    assert set(orjson.loads(state_payload("online"))) == {"state", "ts"}


def test_online_payload_without_outbox_or_certificate_has_every_key() -> None:
    """Birth without statistics: every agreed key is present, the unknown ones null / 0."""
    now = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
    doc = orjson.loads(online_payload(now=now, version="1.2.3"))
    assert doc == {
        "state": "online",
        "ts": "2026-12-05T18:00:00+00:00",
        "agent_version": "1.2.3",
        "outbox": {"depth": 0, "oldest_unsent_ts": None, "unconfirmed": 0, "drops": {}},
        "cert_not_after": None,
    }


def test_gateway_state_reports_outbox_unconfirmed_and_cert(
    tmp_path: Path, short_cert: tuple[Path, datetime]
) -> None:
    """With 3 readings pending, 2 unconfirmed and a certificate valid 3 more days, the online
    document says depth 3, the oldest's capture time, unconfirmed 2, the certificate's notAfter
    and the installed package's version; an empty outbox says depth 0 and oldest null."""
    crt, not_after = short_cert
    with Outbox(tmp_path / "o.sqlite3") as box:
        before = time.time()
        seqs = box.append([cap(1), cap(2), cap(3)])
        after = time.time()
        gw = GatewayState(box, crt)
        gw.unconfirmed = lambda: 2
        doc = orjson.loads(gw.online())
        assert doc["state"] == "online"
        assert doc["agent_version"] == agent_version() != ""
        assert doc["cert_not_after"] == not_after.isoformat()
        assert doc["outbox"]["depth"] == 3
        assert doc["outbox"]["unconfirmed"] == 2
        oldest = datetime.fromisoformat(doc["outbox"]["oldest_unsent_ts"]).timestamp()
        assert before - 1 <= oldest <= after + 1
        box.delete(seqs)
        doc = orjson.loads(gw.online())
        assert doc["outbox"] == {
            "depth": 0, "oldest_unsent_ts": None, "unconfirmed": 2, "drops": {}
        }  # fmt: skip


def test_heartbeat_carries_the_outbox_drops_by_reason_and_its_interval(tmp_path: Path) -> None:
    """An outbox of 2 rows given 5 readings drops the 3 oldest: the heartbeat's
    ``outbox.drops`` counts them by reason, as ``outbox stats`` does, and ``interval_s`` is the
    heartbeat's period, so the cloud can tell a stopped heartbeat from one not due yet."""
    with Outbox(tmp_path / "o.sqlite3", Budget(max_rows=2)) as box:
        box.append([cap(1), cap(2), cap(3), cap(4), cap(5)])
        gw = GatewayState(box, None, interval_s=15.0)
        doc = orjson.loads(gw.online())
        assert doc["outbox"]["drops"] == box.stats().dropped == {"budget_energy": 3}
        assert doc["outbox"]["depth"] == 2
        assert doc["interval_s"] == 15.0
        assert "interval_s" not in orjson.loads(GatewayState(box, None).online())


def test_cert_not_after_is_none_for_a_missing_or_foreign_file(tmp_path: Path) -> None:
    """No file, or a file that is no PEM certificate: null, never an exception."""
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"not a certificate")
    assert cert_not_after(tmp_path / "absent.crt") is None
    assert cert_not_after(junk) is None
    assert cert_not_after(None) is None


def test_certificate_expiry_metric_is_the_not_after_and_absent_without_cert(
    tmp_path: Path, short_cert: tuple[Path, datetime]
) -> None:
    """``telemetry_edge_certificate_expiry_timestamp_seconds`` is the notAfter as Unix time;
    without a certificate the sample is absent (not 0, which would look expired)."""
    crt, not_after = short_cert
    name = "telemetry_edge_certificate_expiry_timestamp_seconds"
    with Outbox(tmp_path / "o.sqlite3") as box:
        with_cert = registry_for(box, Counters(), _Conn(), cert_not_after=cert_not_after(crt))
        without = registry_for(box, Counters(), _Conn())
        assert with_cert.get_sample_value(name) == not_after.timestamp()
        assert without.get_sample_value(name) is None
        assert with_cert.get_sample_value("telemetry_edge_outbox_oldest_age_seconds") == 0.0


def test_failed_outbox_statistics_leave_the_outbox_out(tmp_path: Path) -> None:
    """Statistics that fail are not reported as an empty outbox (depth 0 would clear the cloud's
    edge_backlog alarm): the heartbeat has no ``outbox`` key, the rest is there."""
    with Outbox(tmp_path / "o.sqlite3") as box:
        box.append([cap(1)])
        gw = GatewayState(box, None)

        def broken() -> None:
            raise RuntimeError("database is locked")

        gw._outbox.stats = broken  # type: ignore[union-attr,method-assign]
        doc = orjson.loads(gw.online())
    assert "outbox" not in doc
    assert doc["state"] == "online"
    assert "cert_not_after" in doc
