"""The gateway's side of enrollment without a server: URLs it refuses, the CSR it makes, and a
pair install that a crash interrupted is completed at the next start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent import enroll
from provisioning import enrollment, pki


@pytest.mark.parametrize(
    "url",
    ["http://api.example.com", "http://10.0.0.1:8000", "ftp://127.0.0.1", "127.0.0.1:8000"],
)
def test_plain_http_is_refused_except_to_loopback(url: str) -> None:
    with pytest.raises(enroll.EnrollError, match="must be https"):
        enroll.check_url(url)


@pytest.mark.parametrize(
    "url", ["https://api.example.com/", "http://127.0.0.1:8000", "http://localhost", "http://[::1]"]
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    assert enroll.check_url(url) == url.rstrip("/")


def test_the_csr_names_the_gateway_only_and_the_ca_accepts_it(tmp_path: Path) -> None:
    made = pki.init(tmp_path / "pki")
    key = enroll.make_key()
    request = x509.load_pem_x509_csr(enroll.make_csr(key, "gw-1"))
    assert request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    assert len(request.extensions) == 0
    enrollment.sign_csr(made.dir, enroll.make_csr(key, "gw-1"), "gw-1", days=1)


def _pair(made: pki.Pki, gateway: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = enroll.make_key()
    signed = enrollment.sign_csr(made.dir, enroll.make_csr(key, gateway), gateway, days=1)
    return key, signed.cert


def test_install_writes_a_private_key_and_keeps_no_next_files(tmp_path: Path) -> None:
    made = pki.init(tmp_path / "pki")
    key, cert = _pair(made, "gw-1")
    crt, key_file = tmp_path / "gw" / "gw.crt", tmp_path / "gw" / "gw.key"
    enroll.install_pair(key, cert, crt, key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in crt.parent.iterdir()) == ["gw.crt", "gw.key"]
    loaded = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert loaded.public_key() == x509.load_pem_x509_certificate(crt.read_bytes()).public_key()


def test_an_install_cut_after_the_key_is_completed_at_start(tmp_path: Path) -> None:
    """Crash between the two moves (new key in place, new certificate still ``.next``): the
    next start moves the certificate, so key and certificate match again."""
    made = pki.init(tmp_path / "pki")
    old_key, old_cert = _pair(made, "gw-1")
    crt, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    enroll.install_pair(old_key, old_cert, crt, key_file)
    new_key, new_cert = _pair(made, "gw-1")
    enroll.install_pair(new_key, new_cert, tmp_path / "staged.crt", tmp_path / "staged.key")
    os.replace(tmp_path / "staged.key", key_file)
    os.replace(tmp_path / "staged.crt", tmp_path / "gw.crt.next")
    assert enroll.finish_install(crt, key_file)
    assert x509.load_pem_x509_certificate(crt.read_bytes()) == new_cert
    assert not (tmp_path / "gw.crt.next").exists()
    assert not enroll.finish_install(crt, key_file)


def test_a_lone_next_key_is_dropped_and_the_old_pair_kept(tmp_path: Path) -> None:
    """Crash before the certificate was written: the old pair stays as it was."""
    crt, key_file = tmp_path / "gw.crt", tmp_path / "gw.key"
    crt.write_bytes(b"old cert")
    key_file.write_bytes(b"old key")
    (tmp_path / "gw.key.next").write_bytes(b"new key")
    assert not enroll.finish_install(crt, key_file)
    assert key_file.read_bytes() == b"old key"
    assert not (tmp_path / "gw.key.next").exists()


def test_the_agent_refuses_a_plain_http_enrollment_url_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from edge_agent.settings import EdgeSettings

    monkeypatch.setenv("TELEMETRY_EDGE_GATEWAY_ID", "gw-1")
    monkeypatch.setenv("TELEMETRY_EDGE_ENROLLMENT_URL", "http://api.example.com/")
    with pytest.raises(ValidationError, match="must be https"):
        EdgeSettings()
    monkeypatch.setenv("TELEMETRY_EDGE_ENROLLMENT_URL", "https://api.example.com/")
    assert EdgeSettings().enrollment_url == "https://api.example.com"
