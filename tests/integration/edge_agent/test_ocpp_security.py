"""OCPP security profiles and the hijack rule at the real ``CentralSystem``, with the ``ocpp``
library's own ChargePoint as the charger over real WebSockets (real TLS on loopback, certificates
from the dev PKI); the upstream credentials against a real ``websockets.serve``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.http11 import Response

from edge_agent.ocpp import CentralSystem, OcppSettings
from edge_agent.ocpp.auth import MAX_FAILURES, hash_password
from edge_agent.ocpp.chargers import load_chargers
from edge_agent.ocpp.lib import ChargePoint, call, call201
from edge_agent.ocpp_cli import set_password_hash
from edge_agent.settings import EdgeSettings
from provisioning.pki import init as pki_init
from telemetry_common.errors import ConfigError
from telemetry_common.settings import env_for
from telemetry_common.tls import client_context
from telemetry_stack.servers import free_port, port_open
from tests.support.fixtures import BrokerInfo, TestPki
from tests.support.forged_certs import sign_with_ca
from tests.support.ocpp_csms import csms_tls, requires_basic_auth
from tests.support.ocpp_peer import OCPP16, OCPP201, Version, basic_auth, charge_point, refusal
from tests.support.processes import BIN, Procs, client_settings, stopped
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PASSWORD = "sixteen-chars-ok"
WRONG = "sixteen-chars-no"
HASH = hash_password(PASSWORD)


def chargers_toml(profile: int, *ids: str) -> str:
    tables = "".join(f'[chargers.{i}]\npassword_hash = "{HASH}"\n' for i in ids)
    return f"[defaults]\nsecurity_profile = {profile}\n{tables}"


@contextlib.asynccontextmanager
async def central(
    tmp_path: Path, toml: str | None, **settings: object
) -> AsyncIterator[CentralSystem]:
    """A central system with ``toml`` as its chargers file, its captures consumed."""
    chargers_file = None
    if toml is not None:
        chargers_file = tmp_path / "chargers.toml"
        chargers_file.write_text(toml)
    config = OcppSettings.model_validate(
        {"port": 0, "state_path": tmp_path / "s.json", "chargers_file": chargers_file, **settings}
    )
    async with CentralSystem(config) as cs:
        consumer = asyncio.create_task(_consume(cs))
        try:
            yield cs
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer


async def _consume(cs: CentralSystem) -> None:
    async for _ in cs.captures():
        pass


def assert_unauthorized(response: Response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert PASSWORD.encode() not in response.body
    assert WRONG.encode() not in response.body


async def boot(cp: ChargePoint, version: Version = "1.6") -> None:
    if version == "2.0.1":
        station = {"vendorName": "V", "model": "M"}
        answer = await cp.call(call201.BootNotification(station, "PowerUp"))
    else:
        answer = await cp.call(
            call.BootNotification(charge_point_model="M", charge_point_vendor="V")
        )
    assert answer.status == "Accepted"


def heartbeat(version: Version) -> Any:
    return call201.Heartbeat() if version == "2.0.1" else call.Heartbeat()


def tls_for(pki: TestPki, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    return client_context(pki.ca_file, *(client or (None, None)))


def tls_settings(pki: TestPki) -> dict[str, object]:
    return {"cert_file": pki.pki.server_cert, "key_file": pki.pki.server_key}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("profile", [1, 2])
async def test_basic_auth_right_password_only(
    tmp_path: Path, pki: TestPki, profile: int, version: Version, caplog: pytest.LogCaptureFixture
) -> None:
    """Profile 1 (ws:// on loopback) and 2 (wss://), OCPP 1.6 and 2.0.1: the right password
    connects; a wrong one,
    none, another charger's username and an unlisted charger get 401 + a Basic challenge,
    counted, logged without the password."""
    tls = tls_for(pki) if profile == 2 else None
    extra = tls_settings(pki) if profile == 2 else {}
    async with (
        asyncio.timeout(30),
        central(tmp_path, chargers_toml(profile, "CP-1"), **extra) as cs,
    ):
        async with charge_point(cs.port, "CP-1", password=PASSWORD, tls=tls, version=version) as cp:
            await boot(cp, version)
        assert_unauthorized(
            await refusal(cs.port, "CP-1", password=WRONG, tls=tls, version=version)
        )
        assert_unauthorized(await refusal(cs.port, "CP-1", tls=tls, version=version))
        assert_unauthorized(
            await refusal(cs.port, "CP-2", password=PASSWORD, tls=tls, version=version)
        )
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{cs.port}/ocpp/CP-1"
        with pytest.raises(InvalidStatus) as other_user:
            async with connect(
                url,
                subprotocols=OCPP201 if version == "2.0.1" else OCPP16,
                additional_headers=basic_auth("CP-2", PASSWORD),
                ssl=tls,
            ):
                pass
        assert_unauthorized(other_user.value.response)
        assert cs.counters.auth_refused == 4
    assert PASSWORD not in caplog.text
    assert WRONG not in caplog.text
    assert "missing or wrong Basic credentials" in caplog.text


async def test_profile_2_refuses_plain_ws(tmp_path: Path, pki: TestPki) -> None:
    """With TLS on, the right password over plain ws:// gets no handshake at all."""
    async with (
        asyncio.timeout(20),
        central(tmp_path, chargers_toml(2, "CP-1"), **tls_settings(pki)) as cs,
    ):
        with pytest.raises((InvalidMessage, OSError)):
            async with charge_point(cs.port, "CP-1", password=PASSWORD):
                pass


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("profile", [1, 2])
async def test_hijack_fails_and_the_right_password_replaces(
    tmp_path: Path, pki: TestPki, profile: int, version: Version
) -> None:
    """On a connected charger id, a newcomer without or with a wrong password is refused and the
    first connection keeps working; the same id with the right password replaces the first
    (which is closed), as OCPP says."""
    tls = tls_for(pki) if profile == 2 else None
    extra = tls_settings(pki) if profile == 2 else {}
    async with (
        asyncio.timeout(30),
        central(tmp_path, chargers_toml(profile, "CP-1"), **extra) as cs,
    ):
        async with charge_point(
            cs.port, "CP-1", password=PASSWORD, tls=tls, version=version
        ) as first:
            await boot(first, version)
            assert_unauthorized(await refusal(cs.port, "CP-1", tls=tls, version=version))
            assert_unauthorized(
                await refusal(cs.port, "CP-1", password=WRONG, tls=tls, version=version)
            )
            assert (await first.call(heartbeat(version))).current_time
            async with charge_point(
                cs.port, "CP-1", password=PASSWORD, tls=tls, version=version
            ) as second:
                assert (await second.call(heartbeat(version))).current_time
                with pytest.raises(ConnectionClosed):
                    await first.call(heartbeat(version))
                await boot(second, version)
        assert cs.counters.auth_refused == 2
        assert cs.counters.connections == 2


async def test_profile_0_refuses_a_second_connection_while_the_first_lives(
    tmp_path: Path,
) -> None:
    """Without credentials nobody can prove to be the charger: a second connection for a
    connected id is refused (409), counted, and the first keeps working; once the first is
    gone, the id is free."""
    async with asyncio.timeout(30), central(tmp_path, None) as cs:
        async with charge_point(cs.port, "CP-0") as first:
            await boot(first)
            assert (await refusal(cs.port, "CP-0")).status_code == 409
            assert (await first.call(call.Heartbeat())).current_time
            assert cs.counters.hijacks_refused == 1
        async with charge_point(cs.port, "CP-0") as again:
            await boot(again)


async def test_profile_3_client_certificate_must_name_the_charger(
    tmp_path: Path, pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Profile 3: a certificate from the chargers' CA with CN = the id connects (and may
    replace a live connection), as does one naming the id in a DNS SAN; one for another id
    and none get 403; one from another CA gets no TLS session."""
    other_dir = tmp_path_factory.mktemp("other-pki")
    pki_init(other_dir)
    other = TestPki(other_dir)
    toml = "[defaults]\nsecurity_profile = 3\n[chargers.CP-3]\n[chargers.CP-4]\n"
    settings = {**tls_settings(pki), "client_ca_file": pki.ca_file}
    async with asyncio.timeout(30), central(tmp_path, toml, **settings) as cs:
        mine = tls_for(pki, pki.client("CP-3"))
        async with charge_point(cs.port, "CP-3", tls=mine) as first:
            await boot(first)
            assert (
                await refusal(cs.port, "CP-3", tls=tls_for(pki, pki.client("CP-4")))
            ).status_code == 403
            assert (await refusal(cs.port, "CP-3", tls=tls_for(pki))).status_code == 403
            assert (
                await refusal(cs.port, "CP-3", password=PASSWORD, tls=tls_for(pki))
            ).status_code == 403
            with pytest.raises((InvalidMessage, OSError)):
                async with charge_point(cs.port, "CP-3", tls=tls_for(pki, other.client("CP-3"))):
                    pass
            assert (await first.call(call.Heartbeat())).current_time
            async with charge_point(cs.port, "CP-3", tls=mine) as second:
                await boot(second)
                with pytest.raises(ConnectionClosed):
                    await first.call(call.Heartbeat())
        assert (await refusal(cs.port, "CP-9", tls=mine)).status_code == 403  # not listed
        now = datetime.now(UTC)
        by_san = sign_with_ca(
            pki.dir, tmp_path / "san", "not-the-id", now - timedelta(hours=1),
            now + timedelta(days=1), dns_names=("CP-4",),
        )  # fmt: skip
        async with charge_point(cs.port, "CP-4", tls=tls_for(pki, by_san)) as by_dns_name:
            await boot(by_dns_name)
        assert cs.counters.auth_refused == 4


async def test_a_changed_chargers_file_applies_at_the_next_handshake(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``edge-agent ocpp passwd`` for a new charger works without a restart; a file that no
    longer loads is logged and the previous one stays in force."""
    async with asyncio.timeout(30), central(tmp_path, chargers_toml(1, "CP-1")) as cs:
        assert cs.settings.chargers_file is not None
        assert_unauthorized(await refusal(cs.port, "CP-2", password=PASSWORD))
        set_password_hash(cs.settings.chargers_file, "CP-2", HASH)
        async with charge_point(cs.port, "CP-2", password=PASSWORD) as cp:
            await boot(cp)
        cs.settings.chargers_file.write_text("[defaults]\nsecurity_profile = 9\n")
        async with charge_point(cs.port, "CP-1", password=PASSWORD) as cp:
            await boot(cp)
        assert_unauthorized(await refusal(cs.port, "CP-1", password=WRONG))
    assert "the previous chargers file stays in force" in caplog.text


async def test_failed_handshakes_are_throttled_per_address(tmp_path: Path) -> None:
    """After MAX_FAILURES refusals within a minute, the address gets 429 even with the right
    password (no password check is done)."""
    async with asyncio.timeout(30), central(tmp_path, chargers_toml(1, "CP-1")) as cs:
        for _ in range(MAX_FAILURES):
            assert_unauthorized(await refusal(cs.port, "CP-1"))
        assert (await refusal(cs.port, "CP-1", password=PASSWORD)).status_code == 429


async def test_concurrent_guesses_are_throttled_too(tmp_path: Path) -> None:
    """Forty wrong passwords sent at once from one address: at most MAX_FAILURES are checked
    (each check costs scrypt's CPU and memory), the rest get 429. Checks in progress count
    against the address, not only the finished ones."""
    async with asyncio.timeout(60), central(tmp_path, chargers_toml(1, "CP-1")) as cs:
        answers = await asyncio.gather(
            *(refusal(cs.port, "CP-1", password=WRONG) for _ in range(4 * MAX_FAILURES))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(401) <= MAX_FAILURES, statuses
    assert statuses.count(429) >= 3 * MAX_FAILURES, statuses


@pytest.mark.parametrize(
    ("toml", "settings", "expected"),
    [
        (chargers_toml(2, "CP-1"), {}, "ocpp.cert_file"),
        ("[defaults]\nsecurity_profile = 3\n[chargers.CP-1]\n", "tls", "ocpp.client_ca_file"),
        ("[defaults]\nsecurity_profile = 1\n[chargers.CP-1]\n", {}, "passwd CP-1"),
    ],
)
async def test_a_config_that_cannot_work_stops_the_start(
    tmp_path: Path, pki: TestPki, toml: str, settings: object, expected: str
) -> None:
    """Profile 2/3 without TLS, 3 without the chargers' CA, profile 1 without a hash: the
    central system does not start (ConfigError)."""
    extra = tls_settings(pki) if settings == "tls" else {}
    with pytest.raises(ConfigError, match=expected):
        async with central(tmp_path, toml, **extra):
            pass


async def test_upstream_credentials_against_a_real_server(tmp_path: Path, pki: TestPki) -> None:
    """``upstream_connect_kwargs`` towards a CSMS that checks Basic auth over TLS, and one
    that requires a client certificate: accepted with them; refused without."""
    seen: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        peer = ws.transport.get_extra_info("peercert")
        seen.append(str(peer.get("subject") if peer else None))
        await ws.send("hello")

    check_basic = requires_basic_auth({"CP-U": PASSWORD})
    cert, key = pki.client("CP-M")
    async with (
        asyncio.timeout(30),
        serve(handler, "127.0.0.1", 0, process_request=check_basic, ssl=csms_tls(pki)) as basic,
        serve(handler, "127.0.0.1", 0, ssl=csms_tls(pki, client_certs=True)) as mutual,
    ):
        basic_port = basic.sockets[0].getsockname()[1]
        mutual_port = mutual.sockets[0].getsockname()[1]
        path = tmp_path / "chargers.toml"
        path.write_text(
            f"""
[defaults]
upstream_url = "wss://127.0.0.1:{basic_port}/ocpp/{{charger_id}}"
upstream_ca_file = "{pki.ca_file}"
[chargers.CP-U]
upstream_password = "{PASSWORD}"
[chargers.CP-M]
upstream_url = "wss://127.0.0.1:{mutual_port}/ocpp/CP-M"
upstream_cert_file = "{cert}"
upstream_key_file = "{key}"
"""
        )
        config = load_chargers(path)
        for charger_id in ("CP-U", "CP-M"):
            url = config.upstream_url(charger_id)
            assert url is not None
            async with connect(url, **config.upstream_connect_kwargs(charger_id)) as ws:
                assert await ws.recv() == "hello"
        assert "CP-M" in seen[-1]
        with pytest.raises(InvalidStatus) as refused:  # no password: the CSMS says 401
            async with connect(
                f"wss://127.0.0.1:{basic_port}/ocpp/CP-X",
                ssl=client_context(pki.ca_file, None, None),
            ):
                pass
        assert refused.value.response.status_code == 401
        no_cert = client_context(pki.ca_file, None, None)
        with pytest.raises((InvalidMessage, OSError, ConnectionClosed)):
            async with connect(f"wss://127.0.0.1:{mutual_port}/ocpp/CP-M", ssl=no_cert) as ws:
                await ws.recv()


async def test_edge_agent_run_with_a_chargers_file(
    broker: BrokerInfo, procs: Procs, tmp_path: Path
) -> None:
    """The real ``edge-agent run --source ocpp`` with profile 1: the right password boots, a
    wrong one and a hijack are refused; a broken chargers file stops it at start (exit 2,
    naming the file and the key)."""
    chargers = tmp_path / "chargers.toml"
    chargers.write_text(chargers_toml(1, "CP-P"))
    port = free_port()

    def env(file: Path) -> dict[str, str]:
        return env_for(
            EdgeSettings,
            **client_settings(broker, "gw-ocppsec"),
            gateway_id="gw-ocppsec",
            outbox_path=tmp_path / "outbox.sqlite3",
            ocpp={"port": port, "state_path": tmp_path / "s.json", "chargers_file": file},
        )

    argv = [str(BIN / "edge-agent"), "run", "--source", "ocpp"]
    edge = procs.start("edge-ocpp", argv, env(chargers))
    edge.wait_ready(lambda: port_open("127.0.0.1", port), timeout=30)
    async with asyncio.timeout(60):
        async with charge_point(port, "CP-P", password=PASSWORD) as cp:
            await boot(cp)
            assert_unauthorized(await refusal(port, "CP-P", password=WRONG))
            assert_unauthorized(await refusal(port, "CP-P"))
            assert (await cp.call(call.Heartbeat())).current_time
    edge.stop(timeout=10)

    broken = tmp_path / "broken.toml"
    broken.write_text("[defaults]\nsecurity_profile = 1\nsecurity_profil = 2\n")
    bad = procs.start("edge-ocpp-bad", argv, env(broken))
    await asyncio.to_thread(wait_until, "the agent refuses the file", stopped(bad), 30)
    assert bad.returncode() == 2
    assert str(broken) in bad.log_tail()
    assert "security_profil" in bad.log_tail()
