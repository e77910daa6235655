"""Proxy mode with the chargers file: the charger's credentials towards the operator's CSMS
(Basic auth; TLS with a client certificate) and its own upstream URL, against real CSMSs that
require them (the ``ocpp`` library's central-system role), with the ``ocpp`` library's
ChargePoint as the charger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from edge_agent.ocpp.lib import call
from telemetry_common.errors import ConfigError
from telemetry_stack.servers import free_port
from tests.support.fixtures import TestPki
from tests.support.ocpp_csms import csms, csms_tls, proxy_gateway, requires_basic_auth
from tests.support.ocpp_peer import charge_point

pytestmark = pytest.mark.integration

UPSTREAM_PASSWORD = "upstream-secret-0001"


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
    ``UPSTREAM_URL`` setting) stops the start."""
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
