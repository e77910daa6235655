"""The dev PKI: a verifiable chain, the right names and usages, private keys that stay private."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from telemetry_common.errors import ConfigError, InvalidIdError
from telemetry_stack import pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def made(tmp_path: Path) -> pki.Pki:
    return pki.init(tmp_path / "pki", extra_hosts=["broker.example", "10.1.2.3"])


def test_server_chain_verifies_for_localhost_and_loopback_ip(made: pki.Pki) -> None:
    """server.crt verifies against ca.crt as a TLS server for localhost, 127.0.0.1, extras."""
    store = Store([_cert(made.ca_file)])
    leaf = _cert(made.server_cert)
    for host in ("localhost", "broker.example"):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
        assert verifier.verify(leaf, [])[-1] == _cert(made.ca_file)
    ip_verifier = (
        PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    assert len(ip_verifier.verify(leaf, [])) == 2
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.example")).verify(
            leaf, []
        )


def test_server_certificate_names_and_usage(made: pki.Pki) -> None:
    """server.crt carries SAN DNS localhost + IP 127.0.0.1 (+ extras) and only serverAuth."""
    cert = _cert(made.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.1.2.3"]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificate_cn_usage_and_chain(made: pki.Pki) -> None:
    """A gateway certificate has CN = gateway id, clientAuth only, and is signed by the CA."""
    crt, key = pki.issue_gateway(made.dir, "gw-7")
    assert (crt, key) == (made.dir / "gw-7.crt", made.dir / "gw-7.key")
    cert = _cert(crt)
    assert _cn(cert) == "gw-7"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # (cryptography's client verifier wants a SAN; ours carry the identity in the CN, which is
    # what Mosquitto's use_identity_as_username reads. The broker tests prove OpenSSL accepts it.)
    cert.verify_directly_issued_by(_cert(made.ca_file))


def test_init_issues_the_bridge_certificate(made: pki.Pki) -> None:
    """init issues telemetry-bridge.crt/.key with CN telemetry-bridge."""
    crt, key = made.client_paths(pki.BRIDGE_IDENTITY)
    assert key.is_file()
    assert _cn(_cert(crt)) == "telemetry-bridge"


def test_private_keys_are_0600_and_certificates_public(made: pki.Pki) -> None:
    """Every private key is mode 0600 (even under a permissive umask); certificates are 0644."""
    old = os.umask(0)
    try:
        pki.issue_gateway(made.dir, "gw-umask")
    finally:
        os.umask(old)
    keys = sorted(made.dir.glob("*.key"))
    assert {k.name for k in keys} >= {
        "ca.key",
        "server.key",
        "telemetry-bridge.key",
        "gw-umask.key",
    }
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((made.dir / "gw-umask.crt").stat().st_mode) == 0o644


def test_init_is_idempotent_and_keeps_the_ca(made: pki.Pki) -> None:
    """A second init keeps the CA, the server and bridge certificates byte for byte."""
    names = ["ca.crt", "ca.key", "server.crt", "server.key", "telemetry-bridge.crt"]
    before = {n: (made.dir / n).read_bytes() for n in names}
    again = pki.init(made.dir, extra_hosts=["broker.example", "10.1.2.3"])
    assert again == made
    assert {n: (made.dir / n).read_bytes() for n in names} == before


def test_existing_gateway_certificate_is_reused(made: pki.Pki) -> None:
    """Issuing an existing gateway again returns the same files without re-keying."""
    crt, key = pki.issue_gateway(made.dir, "gw-1")
    first = key.read_bytes()
    assert pki.issue_gateway(made.dir, "gw-1") == (crt, key)
    assert key.read_bytes() == first


def test_init_reissues_server_cert_for_new_hosts_but_keeps_ca(made: pki.Pki) -> None:
    """A new extra host re-issues server.crt (under the same CA) so it covers that host."""
    ca_before = made.ca_file.read_bytes()
    pki.init(made.dir, extra_hosts=["other.example"])
    assert made.ca_file.read_bytes() == ca_before
    san = _cert(made.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "other.example" in san.value.get_values_for_type(x509.DNSName)


def test_force_replaces_the_ca_and_reissues_clients(made: pki.Pki) -> None:
    """init(force=True) makes a new CA and re-issues existing client certificates under it."""
    crt, _ = pki.issue_gateway(made.dir, "gw-2")
    old_ca = made.ca_file.read_bytes()
    pki.init(made.dir, force=True)
    assert made.ca_file.read_bytes() != old_ca
    _cert(crt).verify_directly_issued_by(_cert(made.ca_file))
    _cert(made.server_cert).verify_directly_issued_by(_cert(made.ca_file))


@pytest.mark.parametrize(
    "name",
    [
        "telemetry-bridge",
        "telemetry-api",
        "telemetry-operator",
        "ca",
        "server",
        "live",
        "deadletter",
        "",
        "a/b",
        "+",
        "#",
        "x" * 65,
    ],
)
def test_bad_or_reserved_gateway_names_are_refused(made: pki.Pki, name: str) -> None:
    """Gateway names outside the id allow-list, or reserved (the bridge, API and operator
    identities, CA/server files, feed topic levels), are refused and nothing is written."""
    before = sorted(p.name for p in made.dir.iterdir())
    with pytest.raises(InvalidIdError):
        pki.issue_gateway(made.dir, name)
    assert sorted(p.name for p in made.dir.iterdir()) == before


def test_init_issues_the_api_identity(made: pki.Pki) -> None:
    """``pki init`` issues the API's certificate (CN telemetry-api) under the CA, as it does the
    bridge's: the API's live mirror and HTTP ingest need it."""
    crt, key = made.client_paths(pki.API_IDENTITY)
    assert key.is_file()
    _cert(crt).verify_directly_issued_by(_cert(made.ca_file))
    cn = _cert(crt).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["telemetry-api"]


def test_issuing_without_a_ca_explains_what_to_do(tmp_path: Path) -> None:
    """Issuing a client certificate in an empty directory says to run `pki init`."""
    with pytest.raises(ConfigError, match="pki init"):
        pki.issue_gateway(tmp_path, "gw-1")
