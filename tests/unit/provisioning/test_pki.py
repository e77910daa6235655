"""The dev PKI: a verifiable chain, the right names and usages, private keys that stay private."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from provisioning import pki
from telemetry_common.errors import ConfigError, InvalidIdError


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
        # the CA's and server's files on a case-insensitive filesystem (macOS, Windows shares)
        "CA",
        "Services-CA",
        "Server",
        "live",
        "deadletter",
        "alarms",
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
    """``pki init`` issues the API's certificate (CN telemetry-api) under the services CA, as it
    does the bridge's: the API's live mirror and HTTP ingest need it."""
    crt, key = made.client_paths(pki.API_IDENTITY)
    assert key.is_file()
    _cert(crt).verify_directly_issued_by(_cert(made.services_ca_file))
    cn = _cert(crt).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["telemetry-api"]


def test_issuing_without_a_ca_explains_what_to_do(tmp_path: Path) -> None:
    """Issuing a client certificate in an empty directory says to run `pki init`."""
    with pytest.raises(ConfigError, match="pki init"):
        pki.issue_gateway(tmp_path, "gw-1")


# --- revocation -----------------------------------------------------------------------------


def _crl(made: pki.Pki) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(made.crl_file.read_bytes())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _handshake(made: pki.Pki, client: tuple[Path, Path]) -> str:
    """An in-memory TLS handshake with a server that, like Mosquitto with ``crlfile``, requires
    a client certificate and checks it against ca.crt and crl.pem: 'ok' or OpenSSL's reason."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(made.server_cert, made.server_key)
    server.load_verify_locations(made.ca_file)
    server.load_verify_locations(made.crl_file)
    server.verify_mode = ssl.CERT_REQUIRED
    server.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    server.maximum_version = ssl.TLSVersion.TLSv1_2  # the verdict comes inside the handshake
    ctx = ssl.create_default_context(cafile=made.ca_file)
    ctx.load_cert_chain(*client)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return f"verify failed: {exc.verify_message}"
            except ssl.SSLError as exc:
                return str(exc.reason)
            peer_in.write(out.read())
    return "ok" if c.version() and s.version() else "incomplete"


def test_init_writes_an_empty_crl_that_lasts_as_long_as_the_ca(made: pki.Pki) -> None:
    """crl.pem exists from `pki init` on: empty, signed by the CA, readable by the broker (0644),
    next update at the CA's expiry (a lapsed CRL would lock every client out)."""
    crl = _crl(made)
    ca = _cert(made.ca_file)
    assert len(crl) == 0
    assert crl.issuer == ca.subject
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    assert crl.next_update_utc == ca.not_valid_after_utc
    assert stat.S_IMODE(made.crl_file.stat().st_mode) == 0o644
    assert _handshake(made, pki.issue_gateway(made.dir, "gw-1")) == "ok"


def test_init_adds_a_crl_to_a_pki_made_before_revocation_existed(made: pki.Pki) -> None:
    """A PKI without crl.pem (made by an older version) gets one from init; the CA is kept."""
    ca_before = made.ca_file.read_bytes()
    made.crl_file.unlink()
    pki.init(made.dir)
    assert made.ca_file.read_bytes() == ca_before
    assert len(_crl(made)) == 0


def test_revoke_lists_the_certificate_and_openssl_refuses_it(made: pki.Pki) -> None:
    """`revoke` adds the certificate's serial to crl.pem (earlier entries kept, CRL number up):
    an OpenSSL server with CRL checking then refuses it and still accepts the others."""
    gw1, gw2, gw3 = (pki.issue_gateway(made.dir, f"gw-{i}") for i in (1, 2, 3))
    number = _crl_number(_crl(made))
    first = pki.revoke(made.dir, "gw-1")
    second = pki.revoke(made.dir, "gw-2")
    crl = _crl(made)
    assert {r.serial_number for r in crl} == {
        _cert(gw1[0]).serial_number,
        _cert(gw2[0]).serial_number,
    }
    assert (first.serial, first.already, second.crl_file) == (
        _cert(gw1[0]).serial_number,
        False,
        made.crl_file,
    )
    assert _crl_number(crl) == number + 2
    assert pki.is_revoked(made, gw1[0])
    assert not pki.is_revoked(made, gw3[0])
    assert _handshake(made, gw1) == "verify failed: certificate revoked"
    assert _handshake(made, gw3) == "ok"


def test_revoking_twice_changes_nothing(made: pki.Pki) -> None:
    """A second `revoke` of the same certificate says so and leaves crl.pem as it is."""
    pki.issue_gateway(made.dir, "gw-1")
    pki.revoke(made.dir, "gw-1")
    before = made.crl_file.read_bytes()
    again = pki.revoke(made.dir, "gw-1")
    assert again.already
    assert made.crl_file.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("gw-none", ConfigError),
        ("ca", InvalidIdError),
        ("server", InvalidIdError),
        ("a/b", InvalidIdError),
    ],
)
def test_revoke_refuses_unknown_and_reserved_names(
    made: pki.Pki, name: str, error: type[Exception]
) -> None:
    """No certificate of that name, the CA's or broker's files, or a name outside the id rules:
    refused, crl.pem untouched."""
    before = made.crl_file.read_bytes()
    with pytest.raises(error):
        pki.revoke(made.dir, name)
    assert made.crl_file.read_bytes() == before


def test_a_revoked_gateway_gets_a_fresh_certificate_when_issued_again(made: pki.Pki) -> None:
    """`pki gateway NAME` keeps a valid certificate but replaces a revoked one (new key, new
    serial, not revoked); `init` does the same for the bridge's certificate."""
    crt, _key = pki.issue_gateway(made.dir, "gw-1")
    old_serial = _cert(crt).serial_number
    pki.revoke(made.dir, "gw-1")
    pki.issue_gateway(made.dir, "gw-1")
    assert _cert(crt).serial_number != old_serial
    assert not pki.is_revoked(made, crt)

    bridge = made.client_paths(pki.BRIDGE_IDENTITY)[0]
    bridge_serial = _cert(bridge).serial_number
    pki.revoke(made.dir, pki.BRIDGE_IDENTITY)
    pki.init(made.dir)
    assert _cert(bridge).serial_number != bridge_serial
    assert not pki.is_revoked(made, bridge)


def test_services_and_gateways_have_separate_cas(made: pki.Pki) -> None:
    """The services CA signs the bridge's, the API's and the operator's certificates, the CA the
    gateways' (the broker's two TLS listeners each trust one): neither verifies under the
    other, and each CA has its own, empty CRL at first."""
    services_ca, ca = _cert(made.services_ca_file), _cert(made.ca_file)
    assert services_ca.subject != ca.subject
    operator = pki.issue_client(made.dir, pki.OPERATOR_IDENTITY)[0]
    gateway = pki.issue_gateway(made.dir, "gw-1")[0]
    for name in (pki.BRIDGE_IDENTITY, pki.API_IDENTITY):
        _cert(made.client_paths(name)[0]).verify_directly_issued_by(services_ca)
    _cert(operator).verify_directly_issued_by(services_ca)
    _cert(gateway).verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="Issuer certificate subject does not match"):
        _cert(gateway).verify_directly_issued_by(services_ca)
    with pytest.raises(ValueError, match="Issuer certificate subject does not match"):
        _cert(operator).verify_directly_issued_by(ca)
    crl = x509.load_pem_x509_crl(made.services_crl_file.read_bytes())
    assert crl.issuer == services_ca.subject
    assert len(crl) == 0
    assert stat.S_IMODE(made.services_ca_key_file.stat().st_mode) == 0o600


def test_init_moves_a_pki_from_before_the_services_ca_to_it(tmp_path: Path) -> None:
    """A PKI made when one CA signed everything (no services-ca.*): ``init`` makes the services
    CA and re-issues the service certificates present under it (the operator's too); the CA,
    the server and the gateways' certificates are kept."""
    made = pki.init(tmp_path)
    pki.issue_client(made.dir, pki.OPERATOR_IDENTITY)
    gw = pki.issue_gateway(made.dir, "gw-1")[0]
    ca_key = serialization.load_pem_private_key(made.ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    for name in (pki.BRIDGE_IDENTITY, pki.API_IDENTITY, pki.OPERATOR_IDENTITY):
        pki._issue(made, name, _cert(made.ca_file), ca_key)  # as the old init did
    for path in (made.services_ca_file, made.services_ca_key_file, made.services_crl_file):
        path.unlink()
    kept = {p: p.read_bytes() for p in (made.ca_file, made.server_cert, gw)}
    pki.init(tmp_path)
    services_ca = _cert(made.services_ca_file)
    for name in (pki.BRIDGE_IDENTITY, pki.API_IDENTITY, pki.OPERATOR_IDENTITY):
        _cert(made.client_paths(name)[0]).verify_directly_issued_by(services_ca)
    assert {p: p.read_bytes() for p in kept} == kept


def test_a_revoked_service_certificate_is_listed_in_the_services_crl(made: pki.Pki) -> None:
    """Revoking the bridge's certificate lists it in services-crl.pem (the services listener's),
    not in crl.pem."""
    bridge = made.client_paths(pki.BRIDGE_IDENTITY)[0]
    done = pki.revoke(made.dir, pki.BRIDGE_IDENTITY)
    assert done.crl_file == made.services_crl_file
    assert pki.is_revoked(made, bridge)
    assert len(x509.load_pem_x509_crl(made.crl_file.read_bytes())) == 0


def test_force_starts_an_empty_crl_under_the_new_ca(made: pki.Pki) -> None:
    """A new CA (`init --force`) gets a new, empty CRL it signed (the old one would fail
    verification in the broker and lock everyone out)."""
    pki.issue_gateway(made.dir, "gw-1")
    pki.revoke(made.dir, "gw-1")
    pki.init(made.dir, force=True)
    crl = _crl(made)
    public_key = _cert(made.ca_file).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert len(crl) == 0
    assert crl.is_signature_valid(public_key)


def test_a_crl_close_to_lapsing_is_resigned_with_its_entries(made: pki.Pki) -> None:
    """init re-signs a CRL whose next update is within CRL_REFRESH, keeping its entries."""
    pki.issue_gateway(made.dir, "gw-1")
    pki.revoke(made.dir, "gw-1")
    entries = list(_crl(made))
    ca_key = serialization.load_pem_private_key(made.ca_key_file.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_cert(made.ca_file).subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=2))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    made.crl_file.write_bytes(
        builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    pki.init(made.dir)
    crl = _crl(made)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - now > pki.CRL_REFRESH
    assert [r.serial_number for r in crl] == [r.serial_number for r in entries]
    assert _crl_number(crl) == 8


def test_revoke_refuses_to_replace_a_damaged_crl(made: pki.Pki) -> None:
    """A crl.pem that does not load (damaged, or another CA's) is not replaced by a CRL with
    only the new entry, which would quietly un-revoke everything revoked before."""
    pki.issue_gateway(made.dir, "gw-1")
    pki.issue_gateway(made.dir, "gw-2")
    pki.revoke(made.dir, "gw-1")
    made.crl_file.write_bytes(made.crl_file.read_bytes()[:-40] + b"-----END X509 CRL-----\n")
    damaged = made.crl_file.read_bytes()
    with pytest.raises(ConfigError, match="crl"):
        pki.revoke(made.dir, "gw-2")
    assert made.crl_file.read_bytes() == damaged
