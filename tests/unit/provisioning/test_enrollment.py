"""Signing gateways' CSRs: each refusal names its reason, a token works exactly once, renewal
needs the current key of a certificate this CA issued and has not revoked."""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import enrollment, pki
from telemetry_common.errors import ConfigError
from tests.support.csrs import bad_signature_csr, csr, custom_csr, weak_rsa_csr
from tests.support.forged_certs import sign_with_ca


@pytest.fixture
def made(tmp_path: Path) -> pki.Pki:
    return pki.init(tmp_path / "pki")


def test_a_signed_certificate_is_the_cas_choice_client_auth_only_not_a_ca(made: pki.Pki) -> None:
    """The CA sets CN, clientAuth, CA:false and the lifetime; the chain ends with the CA."""
    signed = enrollment.sign_csr(made.dir, csr("gw-7"), "gw-7", days=2.5)
    cert = signed.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-7"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    life = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=2.4) < life <= dt.timedelta(days=2.5)
    cert.verify_directly_issued_by(pki.load_cert(made.ca_file))
    assert signed.chain_pem.endswith(made.ca_file.read_bytes())
    assert made.client_paths("gw-7")[0].read_bytes() in signed.chain_pem


@pytest.mark.parametrize(
    ("request_pem", "error", "reason"),
    [
        (lambda: csr("gw-other"), enrollment.RefusedError, "is not the gateway id 'gw-7'"),
        (lambda: custom_csr("*.gw-7"), enrollment.BadCsrError, "wildcard CN"),
        (lambda: custom_csr("*"), enrollment.BadCsrError, "wildcard CN"),
        (
            lambda: custom_csr("gw-7", sans=["gw-7", "*.example.com"]),
            enrollment.BadCsrError,
            "subject alternative names refused",
        ),
        (lambda: custom_csr("gw-7", ca=True), enrollment.BadCsrError, "extensions refused"),
        (lambda: bad_signature_csr("gw-7"), enrollment.BadCsrError, "signature does not verify"),
        (lambda: weak_rsa_csr("gw-7"), enrollment.BadCsrError, "RSA key of 1024 bits"),
        (lambda: b"not a csr", enrollment.BadCsrError, "not a PEM certificate signing request"),
    ],
    ids=["other-gateway", "wildcard", "star", "sans", "ca-extension", "bad-sig", "weak", "junk"],
)
def test_each_refusal_names_its_reason(
    made: pki.Pki, request_pem: object, error: type[Exception], reason: str
) -> None:
    """Another gateway's CN, wildcards, SANs, extensions, a bad signature, a weak key: refused."""
    assert callable(request_pem)
    with pytest.raises(error, match=reason):
        enrollment.sign_csr(made.dir, request_pem(), "gw-7", days=90)
    assert not made.client_paths("gw-7")[0].exists()


@pytest.mark.parametrize("name", ["telemetry-bridge", "server", "live"])
def test_a_reserved_id_is_refused(made: pki.Pki, name: str) -> None:
    with pytest.raises(enrollment.RefusedError, match="reserved"):
        enrollment.sign_csr(made.dir, csr(name), name, days=90)


def test_rsa_2048_and_p384_are_accepted(made: pki.Pki) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enrollment.sign_csr(made.dir, custom_csr("gw-r", key=rsa_key), "gw-r", days=1)
    p384 = ec.generate_private_key(ec.SECP384R1())
    enrollment.sign_csr(made.dir, custom_csr("gw-p", key=p384), "gw-p", days=1)


def test_a_token_is_stored_as_a_hash_and_signs_once(made: pki.Pki) -> None:
    """The token's text is nowhere on disk; a second use is refused as used."""
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-7")
    files = list(tokens.dir.iterdir())
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert token not in files[0].name
    assert token.encode() not in files[0].read_bytes()
    assert json.loads(files[0].read_bytes())["gateway_id"] == "gw-7"
    tokens.redeem(token, csr("gw-7"), days=90)
    with pytest.raises(enrollment.TokenError, match="already used"):
        tokens.redeem(token, csr("gw-7"), days=90)


def test_a_refused_csr_does_not_use_up_the_token(made: pki.Pki) -> None:
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-7")
    with pytest.raises(enrollment.RefusedError, match="not the gateway id"):
        tokens.redeem(token, csr("gw-8"), days=90)
    assert tokens.redeem(token, csr("gw-7"), days=90).gateway_id == "gw-7"


def test_expired_tokens_are_pruned_when_a_new_one_is_made(made: pki.Pki) -> None:
    tokens = enrollment.Tokens(made.dir)
    tokens.create("gw-7", dt.timedelta(seconds=-1))
    tokens.create("gw-8", dt.timedelta(seconds=-1))
    tokens.create("gw-9")
    assert len(list(tokens.dir.iterdir())) == 1


def test_expired_and_unknown_tokens_are_refused(made: pki.Pki) -> None:
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-7", dt.timedelta(seconds=-1))
    with pytest.raises(enrollment.TokenError, match="expired"):
        tokens.redeem(token, csr("gw-7"), days=90)
    with pytest.raises(enrollment.TokenError, match="unknown token"):
        tokens.redeem("made-up", csr("gw-7"), days=90)


def _race(sign: Callable[[bytes], object], requests: list[bytes]) -> list[str]:
    """``sign`` each request in its own thread, all released at once: "signed" or the reason
    of each refusal."""
    start = threading.Barrier(len(requests))
    outcomes: list[str] = []

    def attempt(request: bytes) -> None:
        start.wait()
        try:
            sign(request)
            outcomes.append("signed")
        except enrollment.EnrollmentError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == len(requests)
    return outcomes


def test_one_token_used_concurrently_signs_exactly_once(made: pki.Pki) -> None:
    """Eight threads redeem one token at the same moment: one certificate, seven refusals."""
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-7")
    outcomes = _race(
        lambda request: tokens.redeem(token, request, days=90), [csr("gw-7") for _ in range(8)]
    )
    assert outcomes.count("signed") == 1
    assert all("already used" in o for o in outcomes if o != "signed")


def test_parse_ttl() -> None:
    assert enrollment.parse_ttl("24h") == dt.timedelta(hours=24)
    assert enrollment.parse_ttl("90s") == dt.timedelta(seconds=90)
    with pytest.raises(ValueError, match="invalid duration"):
        enrollment.parse_ttl("tomorrow")


# --- renewal --------------------------------------------------------------------------------


def _enrolled(made: pki.Pki, gateway: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = enrollment.sign_csr(made.dir, custom_csr(gateway, key=key), gateway, days=1)
    return key, signed.cert.public_bytes(serialization.Encoding.PEM)


def _proof(key: ec.EllipticCurvePrivateKey, request: bytes) -> bytes:
    der = x509.load_pem_x509_csr(request).public_bytes(serialization.Encoding.DER)
    return key.sign(der, ec.ECDSA(hashes.SHA256()))


def test_renewal_signs_for_the_holder_of_the_current_key(made: pki.Pki) -> None:
    key, cert = _enrolled(made, "gw-7")
    request = csr("gw-7")
    signed = enrollment.renew(made.dir, request, cert, _proof(key, request), days=3)
    assert signed.cert.public_key() == x509.load_pem_x509_csr(request).public_key()
    assert signed.cert.serial_number != x509.load_pem_x509_certificate(cert).serial_number


def test_renewal_refusals(made: pki.Pki, tmp_path: Path) -> None:
    """Another key's proof, another CN, a revoked, an expired or a foreign certificate."""
    key, cert = _enrolled(made, "gw-7")
    request = csr("gw-7")
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(enrollment.RefusedError, match="not made by the current certificate"):
        enrollment.renew(made.dir, request, cert, _proof(stranger, request), days=3)
    other = csr("gw-8")
    with pytest.raises(enrollment.RefusedError, match="is not the gateway id 'gw-7'"):
        enrollment.renew(made.dir, other, cert, _proof(key, other), days=3)
    foreign = pki.init(tmp_path / "other")
    fkey, fcert = _enrolled(foreign, "gw-7")
    with pytest.raises(enrollment.RefusedError, match="not issued by this CA"):
        enrollment.renew(made.dir, request, fcert, _proof(fkey, request), days=3)
    now = dt.datetime.now(dt.UTC)
    crt, _k = sign_with_ca(
        made.dir, tmp_path / "old", "gw-7", now - dt.timedelta(days=2), now - dt.timedelta(days=1)
    )
    old_key = serialization.load_pem_private_key(_k.read_bytes(), None)
    assert isinstance(old_key, ec.EllipticCurvePrivateKey)
    with pytest.raises(enrollment.RefusedError, match="expired"):
        enrollment.renew(made.dir, request, crt.read_bytes(), _proof(old_key, request), days=3)
    pki.revoke(made.dir, "gw-7")
    with pytest.raises(enrollment.RefusedError, match="revoked"):
        enrollment.renew(made.dir, request, cert, _proof(key, request), days=3)


def test_a_superseded_certificate_cannot_renew_again(made: pki.Pki) -> None:
    """A renewal's proof (current certificate + CSR + signature) works once: replayed after the
    renewal, or from an older certificate the CA has since replaced (renewed or revoked: only
    the latest one is on the CRL), it is refused. A retry of the same CSR (the answer was lost)
    gets the certificate already issued, not a new one."""
    key, cert = _enrolled(made, "gw-7")
    new_key = ec.generate_private_key(ec.SECP256R1())
    request = custom_csr("gw-7", key=new_key)
    proof = _proof(key, request)
    first = enrollment.renew(made.dir, request, cert, proof, days=3)
    again = enrollment.renew(made.dir, request, cert, proof, days=3)  # same CSR: idempotent
    assert again.cert.serial_number == first.cert.serial_number
    other = csr("gw-7")  # the old key, a new CSR: the old certificate was superseded
    with pytest.raises(enrollment.RefusedError, match="superseded"):
        enrollment.renew(made.dir, other, cert, _proof(key, other), days=3)
    pki.revoke(made.dir, "gw-7")  # revokes the latest; the older one must not bring it back
    with pytest.raises(enrollment.RefusedError, match="revoked"):
        enrollment.renew(made.dir, request, cert, proof, days=3)
    with pytest.raises(enrollment.RefusedError, match="superseded"):
        enrollment.renew(made.dir, other, cert, _proof(key, other), days=3)


def test_concurrent_renewals_from_one_certificate_sign_once(made: pki.Pki) -> None:
    """Eight threads renew with the same current certificate and eight new keys at once: one
    certificate is signed, the others are refused as superseded."""
    key, cert = _enrolled(made, "gw-7")
    outcomes = _race(
        lambda request: enrollment.renew(made.dir, request, cert, _proof(key, request), days=3),
        [csr("gw-7") for _ in range(8)],
    )
    assert outcomes.count("signed") == 1, outcomes
    assert all("superseded" in o for o in outcomes if o != "signed")


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_renewal_fails_closed_without_a_readable_crl(made: pki.Pki, damage: str) -> None:
    """A revoked certificate must not renew because the CRL could not be read: an unreadable
    or missing crl.pem stops renewal (the CA is not usable) instead of counting as no
    revocations."""
    key, cert = _enrolled(made, "gw-7")
    pki.revoke(made.dir, "gw-7")
    if damage == "garbage":
        made.crl_file.write_bytes(b"not a CRL")
    else:
        made.crl_file.unlink()
    request = csr("gw-7")
    with pytest.raises(ConfigError, match="crl"):
        enrollment.renew(made.dir, request, cert, _proof(key, request), days=3)
