"""Proxy mode with the chargers file: the charger's credentials towards the operator's CSMS
(Basic auth; TLS with a client certificate) and its own upstream URL, against real CSMSs that
require them (the ``ocpp`` library's central-system role), with the ``ocpp`` library's
ChargePoint as the charger."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from edge_agent.ocpp.auth import hash_password
from edge_agent.ocpp.lib import call, call201
from telemetry_common.errors import ConfigError
from telemetry_stack.servers import free_port
from tests.support.fixtures import TestPki
from tests.support.ocpp_csms import csms, csms_tls, proxy_gateway, requires_basic_auth
from tests.support.ocpp_peer import Version, charge_point, refusal

pytestmark = pytest.mark.integration

UPSTREAM_PASSWORD = "upstream-secret-0001"
PASSWORD = "sixteen-chars-ok"
WRONG = "sixteen-chars-no"
HASH = hash_password(PASSWORD)


async def test_upstream_credentials_and_url_come_from_the_chargers_file(
    tmp_path: Path, pki: TestPki
) -> None:
    """CP-B reaches a CSMS that requires its Basic password (``[defaults]`` URL); CP-M its own
    URL, a ``wss://`` CSMS that requires a client certificate (trusted through
    ``upstream_ca_file``); CP-N has no password, so the CSMS's 401 refuses it at the gateway."""
    basic_port, mtls_port = free_port(), free_port()
    cert, key = pki.client("CP-M")
    chargers = tmp_path / "chargers.toml"
    chargers.write_text(
        f"""
[defaults]
upstream_url = "ws://127.0.0.1:{basic_port}/ocpp/{{charger_id}}"
[chargers.CP-B]
upstream_password = "{UPSTREAM_PASSWORD}"
[chargers.CP-N]
[chargers.CP-M]
upstream_url = "wss://127.0.0.1:{mtls_port}/ocpp/CP-M"
upstream_ca_file = "{pki.ca_file}"
upstream_cert_file = "{cert}"
upstream_key_file = "{key}"
"""
    )
    chargers.chmod(0o600)
    async with (
        asyncio.timeout(60),
        csms(basic_port, process_request=requires_basic_auth({"CP-B": UPSTREAM_PASSWORD})) as by_pw,
        csms(mtls_port, tls=csms_tls(pki, client_certs=True)) as by_cert,
        proxy_gateway(tmp_path, None, chargers_file=chargers) as (cs, _),
    ):
        for charger_id in ("CP-B", "CP-M"):
            async with charge_point(cs.port, charger_id) as cp:
                boot = await cp.call(call.BootNotification("M", "V"))
                assert boot.interval == 60  # the CSMS's answer
        with pytest.raises(InvalidStatus) as refused:
            async with charge_point(cs.port, "CP-N"):
                pass
        assert refused.value.response.status_code == 401
        assert by_pw.frames("CP-B").calls_received()[0][0] == "BootNotification"
        assert by_cert.frames("CP-M").calls_received()[0][0] == "BootNotification"
        peer = by_cert.peers["CP-M"][0].recorded.ws
        assert "CP-M" in str(peer.transport.get_extra_info("peercert")["subject"])
        assert by_pw.handshakes == ["CP-B", "CP-N"]
        assert "CP-N" not in by_pw.peers


async def test_no_upstream_url_for_a_charger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only CP-A has an upstream URL: another charger is refused at the handshake (404) with a
    log line that says what to set; a chargers file that gives nobody a URL (and no
    ``UPSTREAM_URL`` setting), or a client certificate that does not load, stops the start."""
    port = free_port()
    chargers = tmp_path / "chargers.toml"
    chargers.write_text(f'[chargers.CP-A]\nupstream_url = "ws://127.0.0.1:{port}/x/CP-A"\n')
    async with (
        asyncio.timeout(30),
        csms(port) as upstream,
        proxy_gateway(tmp_path, None, chargers_file=chargers) as (cs, _),
    ):
        async with charge_point(cs.port, "CP-A") as cp:
            assert (await cp.call(call.Heartbeat())).current_time
        with pytest.raises(InvalidStatus) as refused:
            async with charge_point(cs.port, "CP-Z"):
                pass
        assert refused.value.response.status_code == 404
        assert upstream.handshakes == ["CP-A"]
    assert "refused CP-Z: no upstream CSMS URL for it" in caplog.text
    chargers.write_text("[defaults]\nsecurity_profile = 0\n")
    with pytest.raises(ConfigError, match=r"ocpp\.upstream_url"):
        async with proxy_gateway(tmp_path, None, chargers_file=chargers):
            pass
    missing = tmp_path / "missing.pem"
    chargers.write_text(
        f'[defaults]\nupstream_url = "wss://127.0.0.1:{port}/x/{{charger_id}}"\n'
        f'[chargers.CP-C]\nupstream_cert_file = "{missing}"\nupstream_key_file = "{missing}"\n'
    )
    with pytest.raises(ConfigError, match=r"chargers\.CP-C\.upstream"):
        async with proxy_gateway(tmp_path, None, chargers_file=chargers):
            pass


def heartbeat(version: Version) -> Any:
    return call201.Heartbeat() if version == "2.0.1" else call.Heartbeat()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_refused_chargers_never_reach_the_csms_and_a_replacement_closes_the_old_relay(
    tmp_path: Path, version: Version
) -> None:
    """Profile 1 in proxy mode. A wrong and a missing password are refused (401) and cause no
    connection to the CSMS (its handshakes say so); on a relayed charger a hijack without or
    with a wrong password is refused and the first relay keeps working; the same id with its
    password replaces the first: the first relay and its own CSMS connection are closed before
    the new one is opened (the CSMS never sees two connections of one charger at a time). With
    profile 0 a second connection is refused (409), with no CSMS connection either."""
    port = free_port()
    chargers = tmp_path / "chargers.toml"
    chargers.write_text(
        f"[defaults]\nsecurity_profile = 1\n"
        f'[chargers.CP-1]\npassword_hash = "{HASH}"\n[chargers.CP-0]\nsecurity_profile = 0\n'
    )
    async with (
        asyncio.timeout(60),
        csms(port) as upstream,
        proxy_gateway(tmp_path, port, chargers_file=chargers) as (cs, _),
    ):
        assert (await refusal(cs.port, "CP-1", password=WRONG, version=version)).status_code == 401
        assert (await refusal(cs.port, "CP-1", version=version)).status_code == 401
        assert upstream.handshakes == []
        async with charge_point(cs.port, "CP-1", password=PASSWORD, version=version) as first:
            assert (await first.call(heartbeat(version))).current_time
            for password in (None, WRONG):
                refused = await refusal(cs.port, "CP-1", password=password, version=version)
                assert refused.status_code == 401
            assert (await first.call(heartbeat(version))).current_time  # through the CSMS
            assert upstream.handshakes == ["CP-1"]
            async with charge_point(cs.port, "CP-1", password=PASSWORD, version=version) as second:
                assert (await second.call(heartbeat(version))).current_time
                with pytest.raises(ConnectionClosed):
                    await first.call(heartbeat(version))
                old, new = upstream.peers["CP-1"]
                assert old.recorded.ws.state is State.CLOSED
                assert new.recorded.ws.state is State.OPEN
                assert [f[2] for f in new.recorded.received] == ["Heartbeat"]
        assert upstream.handshakes == ["CP-1", "CP-1"]
        assert upstream.overlaps == []
        async with charge_point(cs.port, "CP-0", version=version) as zero:
            assert (await refusal(cs.port, "CP-0", version=version)).status_code == 409
            assert (await zero.call(heartbeat(version))).current_time
        assert upstream.handshakes == ["CP-1", "CP-1", "CP-0"]
        assert cs.counters.hijacks_refused == 1
