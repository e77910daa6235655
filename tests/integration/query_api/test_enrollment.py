"""``POST /v1/enrollment`` and ``/v1/enrollment/renew`` of a real ``telemetry-api`` process
with a real PKI directory: a success, each refusal as a problem with its status, a token used
concurrently signs once, the outcomes are counted and no token is logged."""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import stat
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning import enrollment, pki
from query_api import enrollment as enrollment_api
from tests.support.csrs import bad_signature_csr, csr, custom_csr, weak_rsa_csr
from tests.support.fixtures import InfluxTarget
from tests.support.processes import Procs, start_api

pytestmark = pytest.mark.integration

PEM = {"Content-Type": "application/x-pem-file"}


def _enrol(api: str, token: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{api}/v1/enrollment", content=body, headers={**PEM, "Authorization": f"Bearer {token}"}
    )


def _problem(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert text in response.json()["detail"]


def _api_with_pki(influx_db: InfluxTarget, procs: Procs, tmp_path: Path) -> tuple[pki.Pki, str]:
    """A new PKI and an API process that enrols with it."""
    made = pki.init(tmp_path / "pki")
    api = start_api(
        procs,
        influx_db,
        secrets.token_urlsafe(24),
        extra_env={"TELEMETRY_API_PKI_DIR": str(made.dir)},
    )
    return made, api


def test_enrollment_endpoint_signs_once_and_refuses_with_reasons(
    influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    made, api = _api_with_pki(influx_db, procs, tmp_path)
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-a")

    # Refusals that leave the token valid: the CSR is checked before the token is spent.
    _problem(_enrol(api, token, csr("gw-b")), 403, "is not the gateway id 'gw-a'")
    _problem(_enrol(api, token, custom_csr("*.gw-a")), 400, "wildcard CN")
    _problem(_enrol(api, token, custom_csr("gw-a", sans=["x.example"])), 400, "alternative")
    _problem(_enrol(api, token, bad_signature_csr("gw-a")), 400, "signature does not verify")
    _problem(_enrol(api, token, weak_rsa_csr("gw-a")), 400, "RSA key of 1024 bits")
    _problem(_enrol(api, "not-a-token", csr("gw-a")), 401, "unknown token")
    no_auth = httpx.post(f"{api}/v1/enrollment", content=csr("gw-a"), headers=PEM)
    _problem(no_auth, 401, "Authorization: Bearer")

    # Success, with JSON {csr}: the certificate, then the CA.
    key = ec.generate_private_key(ec.SECP256R1())
    ok = httpx.post(
        f"{api}/v1/enrollment",
        json={"csr": custom_csr("gw-a", key=key).decode()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert ok.status_code == 200, ok.text
    chain = x509.load_pem_x509_certificates(ok.content)
    assert chain[0].public_key() == key.public_key()
    assert chain[1] == pki.load_cert(made.ca_file)
    _problem(_enrol(api, token, csr("gw-a")), 401, "already used")

    expired = tokens.create("gw-a", enrollment.parse_ttl("1s") * -1)
    _problem(_enrol(api, expired, csr("gw-a")), 401, "expired")

    # Renewal: the current key's signature over the new CSR's DER.
    def renew(
        current: x509.Certificate,
        signer: ec.EllipticCurvePrivateKey,
        new_key: ec.EllipticCurvePrivateKey,
    ) -> httpx.Response:
        new = custom_csr("gw-a", key=new_key)
        der = x509.load_pem_x509_csr(new).public_bytes(serialization.Encoding.DER)
        body = {
            "csr": new.decode(),
            "certificate": current.public_bytes(serialization.Encoding.PEM).decode(),
            "signature": base64.b64encode(signer.sign(der, ec.ECDSA(hashes.SHA256()))).decode(),
        }
        return httpx.post(f"{api}/v1/enrollment/renew", json=body)

    key2 = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    _problem(renew(chain[0], stranger, key2), 403, "not made by the current")
    renewed = renew(chain[0], key, key2)
    assert renewed.status_code == 200, renewed.text
    second = x509.load_pem_x509_certificates(renewed.content)[0]
    assert second.public_key() == key2.public_key()
    assert second.serial_number != chain[0].serial_number
    pki.revoke(made.dir, "gw-a")  # the current certificate: the renewed one
    _problem(renew(second, key2, stranger), 403, "revoked")
    _problem(httpx.post(f"{api}/v1/enrollment/renew", json={"csr": "x"}), 400, "certificate")

    # One token, two concurrent requests: exactly one certificate.
    shared = tokens.create("gw-c")
    start = threading.Barrier(2)
    codes: list[int] = []

    def race() -> None:
        request = csr("gw-c")
        start.wait()
        codes.append(_enrol(api, shared, request).status_code)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [200, 401]

    metrics = httpx.get(f"{api}/metrics").text
    assert 'telemetry_api_enrollments_total{kind="token",outcome="signed"} 2.0' in metrics
    assert 'telemetry_api_enrollments_total{kind="renew",outcome="signed"} 1.0' in metrics
    assert 'telemetry_api_enrollments_total{kind="renew",outcome="refused"} 2.0' in metrics
    assert 'telemetry_api_enrollments_total{kind="token",outcome="bad_token"} 5.0' in metrics
    log = procs.started[0].log_file.read_text()
    assert "enrollment (token) refused" in log
    for secret in (token, expired, shared):
        assert secret not in log


def test_enrollment_is_off_without_a_pki_dir(influx_db: InfluxTarget, procs: Procs) -> None:
    api = start_api(procs, influx_db, secrets.token_urlsafe(24))
    _problem(_enrol(api, "t", csr("gw-a")), 404, "enrollment is off")


def test_a_pki_without_its_ca_key_answers_503_and_spends_no_token(
    influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    made = pki.init(tmp_path / "pki")
    tokens = enrollment.Tokens(made.dir)
    token = tokens.create("gw-a")
    made.ca_key_file.rename(tmp_path / "ca.key.offline")  # e.g. the CA key kept offline
    api = start_api(
        procs,
        influx_db,
        secrets.token_urlsafe(24),
        extra_env={"TELEMETRY_API_PKI_DIR": str(made.dir)},
    )
    _problem(_enrol(api, token, csr("gw-a")), 503, "the CA is not usable")
    (tmp_path / "ca.key.offline").rename(made.ca_key_file)
    assert _enrol(api, token, csr("gw-a")).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(
    influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """The enrollment endpoints take no API key: a client announcing (or streaming) a body
    beyond MAX_BODY gets 413 at once, without the API holding the body in memory first."""
    _made, api = _api_with_pki(influx_db, procs, tmp_path)
    host, port = httpx.URL(api).host, httpx.URL(api).port
    assert port is not None
    for path, framing in [
        ("/v1/enrollment", b"Content-Length: 1000000000\r\n"),
        ("/v1/enrollment/renew", b"Transfer-Encoding: chunked\r\n"),
    ]:
        with socket.create_connection((host, port), timeout=15) as sock:
            sock.sendall(
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: api\r\n" + framing
                + b"Content-Type: application/json\r\n\r\n"
            )  # fmt: skip
            chunk = b"x" * 16384
            for _ in range(enrollment_api.MAX_BODY // len(chunk) + 2):  # never the whole body
                with contextlib.suppress(OSError):  # the API may answer and close meanwhile
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if b"chunked" in framing
                                 else chunk)  # fmt: skip
            head = sock.recv(4096)  # blocks (then times out) if the API waits for the rest
        assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_a_renewal_whose_answer_was_lost_is_retried_with_the_same_key(
    influx_db: InfluxTarget, procs: Procs, tmp_path: Path
) -> None:
    """The CA signed, but the agent could not install the answer (here: its ``.next`` path is
    in the way; in the field: the answer lost on the way back). The retry sends the same key's
    CSR with the same (now superseded) certificate and gets the certificate already issued,
    instead of a 403 that would leave re-enrolling with a token as the only way out."""
    from edge_agent import enroll

    made, api = _api_with_pki(influx_db, procs, tmp_path)
    crt, key_file = tmp_path / "gw" / "gw.crt", tmp_path / "gw" / "gw.key"
    first = enroll.enroll(api, enrollment.Tokens(made.dir).create("gw-a"), "gw-a", crt, key_file)
    (tmp_path / "gw" / "gw.crt.next").mkdir()  # the install fails after the CA signed
    with pytest.raises(IsADirectoryError):
        enroll.renew(api, "gw-a", crt, key_file)
    issued = pki.load_cert(made.client_paths("gw-a")[0])
    assert issued.serial_number != first.serial
    (tmp_path / "gw" / "gw.crt.next").rmdir()
    renewed = enroll.renew(api, "gw-a", crt, key_file)
    assert renewed.serial == issued.serial_number
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert key.public_key() == pki.load_cert(crt).public_key()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in crt.parent.iterdir()) == ["gw.crt", "gw.key"]
