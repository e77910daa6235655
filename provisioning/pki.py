"""A development PKI: two EC P-256 CAs, the broker's server certificate and client certificates.

Layout of a PKI directory (docs/design.md, contract)::

    ca.crt ca.key              the CA of the broker and the gateways (never overwritten unless
                               ``force``); every client verifies the broker with ca.crt
    crl.pem                    the CA's certificate revocation list, always present (empty at
                               first); the broker's gateway listener names it (``crlfile``)
    services-ca.crt .key       the services CA: signs the bridge's, the API's and the operator's
                               certificates, the only ones the broker's services listener takes
    services-crl.pem           the services CA's revocation list (the services listener's)
    server.crt server.key      the broker: SAN localhost + 127.0.0.1 (+ extra hosts), serverAuth
    {name}.crt {name}.key      a client: CN = name = MQTT username on the broker, clientAuth

Two CAs because the broker has two TLS listeners (mosquitto/README.md): on the gateway listener
the client id is replaced by the certificate's CN, so no gateway can take another's session;
services (several bridges share one CN) keep their own client ids on the services listener,
which a gateway certificate cannot enter since its CA is not trusted there.

Private keys are created with mode 0600 (never widened after the fact). Certificates are 0644.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from telemetry_common.errors import ConfigError, InvalidIdError
from telemetry_common.files import write_atomic
from telemetry_common.ids import check_id
from telemetry_common.topics import RESERVED_GATEWAY_IDS

#: The CN of the bridge's client certificate; the broker ACL grants it the cloud-side topics.
BRIDGE_IDENTITY: Final = "telemetry-bridge"
#: The CN of the query API's certificate: reads the live feed and gateway states, publishes
#: HTTP-ingested readings (see mosquitto/acl.tmpl).
API_IDENTITY: Final = "telemetry-api"
#: The CN allowed to send commands to gateways (``{root}/+/cmd/#``) and read their answers
#: (``{root}/+/reply/#``); ``telemetry-stack pki operator`` issues it.
OPERATOR_IDENTITY: Final = "telemetry-operator"
#: Names a client certificate may not take: the bridge (its ACL is wider), the file stems of the
#: CA and the server (issuing them would overwrite those files), and the topic levels the ACL
#: reserves under the root (a gateway called ``live`` could write ``{root}/live/state``).
RESERVED_GATEWAY_NAMES: Final = frozenset(
    {
        BRIDGE_IDENTITY,
        API_IDENTITY,
        OPERATOR_IDENTITY,
        "ca",
        "services-ca",
        "server",
        *RESERVED_GATEWAY_IDS,
    }
)
#: The identities whose certificates the services CA signs (they connect on the services
#: listener, whose client ids are not replaced by the CN).
SERVICE_IDENTITIES: Final = frozenset({BRIDGE_IDENTITY, API_IDENTITY, OPERATOR_IDENTITY})
#: File stems that are not client certificates.
_NOT_CLIENTS: Final = frozenset({"ca", "services-ca", "server"})

CA_DAYS: Final = 3650
LEAF_DAYS: Final = 825
DEFAULT_SERVER_HOSTS: Final = ("localhost", "127.0.0.1")
#: The CRL is re-signed by ``init`` when its nextUpdate is closer than this: an expired CRL makes
#: OpenSSL refuse every client certificate, so it must never be allowed to lapse.
CRL_REFRESH: Final = dt.timedelta(days=30)


class ReservedNameError(InvalidIdError):
    """A gateway id that is allowed in general but reserved here (carries the reason)."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__("gateway id", value)
        self.args = (f"gateway id {value!r} is reserved ({reason})",)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of a PKI directory made by :func:`init`."""

    dir: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key_file(self) -> Path:
        return self.dir / "ca.key"

    @property
    def crl_file(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def services_ca_file(self) -> Path:
        return self.dir / "services-ca.crt"

    @property
    def services_ca_key_file(self) -> Path:
        return self.dir / "services-ca.key"

    @property
    def services_crl_file(self) -> Path:
        return self.dir / "services-crl.pem"

    def crl_of(self, name: str) -> Path:
        """The revocation list that covers client ``name``'s certificate."""
        return self.services_crl_file if name in SERVICE_IDENTITIES else self.crl_file

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client_paths(self, name: str) -> tuple[Path, Path]:
        """``(cert_file, key_file)`` of client ``name`` (which may not exist yet)."""
        check_id("client name", name)
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


# --- file helpers ---------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _save(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, crt: Path, key_path: Path
) -> None:
    # Key first: a certificate on disk always has its key next to it.
    write_private(key_path, _key_pem(key))
    write_public(crt, cert.public_bytes(serialization.Encoding.PEM))


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_ca(
    pki: Pki, *, services: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_file = (
        (pki.services_ca_file, pki.services_ca_key_file)
        if services
        else (pki.ca_file, pki.ca_key_file)
    )
    if not crt.is_file() or not key_file.is_file():
        raise ConfigError(
            "pki", f"no {crt.name} in {pki.dir} (run `telemetry-stack pki init` first)"
        )
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("pki", f"{key_file} is not an EC private key")
    return load_cert(crt), key


def _issued_by(cert_file: Path, ca_cert: x509.Certificate) -> bool:
    try:
        load_cert(cert_file).verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, OSError):
        return False
    return True


# --- certificate builders -------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "charger-telemetry dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _validity(builder: x509.CertificateBuilder, lifetime: dt.timedelta) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    # Backdated a little so a clock that is slightly behind still accepts a fresh certificate.
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + lifetime)


def _make_ca(
    cn: str = "charger-telemetry dev CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return _validity(builder, dt.timedelta(days=CA_DAYS)).sign(key, hashes.SHA256()), key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    eku: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_leaf(ca_cert, ca_key, cn, key.public_key(), eku, sans, dt.timedelta(days=LEAF_DAYS))
    return cert, key


def sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    public_key: CertificatePublicKeyTypes,
    eku: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """A leaf certificate for ``public_key``: subject CN ``cn``, not a CA, digitalSignature and
    ``eku`` only, valid for ``lifetime``; every extension is the CA's choice (none is copied
    from a request)."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _validity(builder, lifetime).sign(ca_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _server_sans(extra_hosts: Iterable[str]) -> list[x509.GeneralName]:
    hosts: list[str] = []
    for host in (*DEFAULT_SERVER_HOSTS, *extra_hosts):
        if host and host not in hosts:
            hosts.append(host)
    return [_general_name(h) for h in hosts]


def _server_is_current(pki: Pki, ca_cert: x509.Certificate, sans: list[x509.GeneralName]) -> bool:
    """True if server.crt exists, was issued by this CA and covers every requested host."""
    if not pki.server_cert.is_file() or not pki.server_key.is_file():
        return False
    cert = load_cert(pki.server_cert)
    try:
        cert.verify_directly_issued_by(ca_cert)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    expires = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return all(san in have for san in sans) and expires > dt.timedelta(days=1)


# --- revocation list ------------------------------------------------------------------------


def _make_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[x509.RevokedCertificate],
    number: int,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA; its nextUpdate is the CA's own expiry (a lapsed CRL would lock
    every client out, and nothing here re-signs it on a schedule)."""
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def load_crl(
    pki: Pki, ca_cert: x509.Certificate, crl_file: Path | None = None
) -> x509.CertificateRevocationList | None:
    """The CRL on disk (``crl_file``, default the CA's crl.pem) if it is readable and signed by
    ``ca_cert``, else None."""
    crl_file = crl_file or pki.crl_file
    if not crl_file.is_file():
        return None
    try:
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        public_key = ca_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return None
        if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public_key):
            return None
    except ValueError:
        return None
    return crl


def _write_crl(crl_file: Path, crl: x509.CertificateRevocationList) -> None:
    write_public(crl_file, crl.public_bytes(serialization.Encoding.PEM))


def _ensure_crl(
    pki: Pki,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    fresh: bool,
    crl_file: Path | None = None,
) -> None:
    """Make sure the CRL (``crl_file``, default crl.pem) exists, is this CA's and does not lapse
    soon (entries are kept)."""
    crl_file = crl_file or pki.crl_file
    crl = None if fresh else load_crl(pki, ca_cert, crl_file)
    if crl is None:
        _write_crl(crl_file, _make_crl(ca_cert, ca_key, [], 1))
        return
    next_update = crl.next_update_utc
    if next_update is None or next_update - dt.datetime.now(dt.UTC) < CRL_REFRESH:
        _write_crl(crl_file, _make_crl(ca_cert, ca_key, list(crl), _crl_number(crl) + 1))


def is_revoked(pki: Pki, cert_file: Path) -> bool:
    """True if the certificate in ``cert_file`` is listed in its CA's CRL (the services CA's for
    a service identity's certificate)."""
    services = Path(cert_file).stem in SERVICE_IDENTITIES
    ca_file, crl_file = (
        (pki.services_ca_file, pki.services_crl_file) if services else (pki.ca_file, pki.crl_file)
    )
    if not ca_file.is_file() or not crl_file.is_file():
        return False
    crl = load_crl(pki, load_cert(ca_file), crl_file)
    serial = load_cert(cert_file).serial_number
    return crl is not None and crl.get_revoked_certificate_by_serial_number(serial) is not None


@dataclass(frozen=True, slots=True)
class Revoked:
    """What :func:`revoke` did."""

    name: str
    serial: int
    crl_file: Path
    already: bool


def revoke(directory: Path, name: str) -> Revoked:
    """Add client certificate ``name`` (its current ``{name}.crt``) to its CA's CRL (crl.pem, or
    services-crl.pem for a service identity).

    The certificate files stay where they are (``issue_gateway``/``issue_client`` replace a
    revoked certificate with a new one). Mosquitto rereads crl.pem on SIGHUP for new
    connections; a restart also drops the revoked client's open connection.
    """
    pki = Pki(Path(directory))
    check_id("client name", name)
    if name in _NOT_CLIENTS:
        raise ReservedNameError(name, "the CAs' and the broker's files")
    crt, _key = pki.client_paths(name)
    if not crt.is_file():
        raise ConfigError("pki", f"no certificate {crt} to revoke")
    ca_cert, ca_key = load_ca(pki, services=name in SERVICE_IDENTITIES)
    crl_file = pki.crl_of(name)
    cert = load_cert(crt)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError("pki", f"{crt} was not issued by its CA in {pki.dir}") from exc
    crl = load_crl(pki, ca_cert, crl_file)
    if crl is None and crl_file.exists():  # a new CRL would drop every earlier revocation
        raise ConfigError(
            "pki",
            f"{crl_file} does not load or is not signed by its CA: restore it from a backup "
            "(or delete it to start an empty one, which un-revokes what it listed)",
        )
    entries = list(crl) if crl is not None else []
    if crl is not None and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
        return Revoked(name, cert.serial_number, crl_file, already=True)
    entries.append(
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(dt.datetime.now(dt.UTC))
        .build()
    )
    number = _crl_number(crl) + 1 if crl is not None else 1
    _write_crl(crl_file, _make_crl(ca_cert, ca_key, entries, number))
    return Revoked(name, cert.serial_number, crl_file, already=False)


# --- public operations ----------------------------------------------------------------------


def init(directory: Path, *, extra_hosts: Iterable[str] = (), force: bool = False) -> Pki:
    """Create (or complete) a PKI in ``directory``; idempotent.

    An existing CA is kept unless ``force``; then a new CA is made and every client certificate
    found in the directory is re-issued under it. The server certificate is (re)issued when it
    is missing, not from this CA, or does not cover ``extra_hosts``. The bridge's and the API's
    certificates are issued when missing or revoked. crl.pem is created when missing (a PKI
    made before revocation existed gets an empty one), made afresh with a new CA, and
    re-signed when it would lapse within :data:`CRL_REFRESH`. The services CA is made when
    missing (or with ``force``), and every service certificate present that it did not sign
    (a PKI made before it existed) is re-issued under it.
    """
    pki = Pki(Path(directory))
    pki.dir.mkdir(parents=True, exist_ok=True)
    has_ca = pki.ca_file.is_file() and pki.ca_key_file.is_file()
    if force or not has_ca:
        ca_cert, ca_key = _make_ca()
        _save(ca_cert, ca_key, pki.ca_file, pki.ca_key_file)
    else:
        ca_cert, ca_key = load_ca(pki)
    _ensure_crl(pki, ca_cert, ca_key, fresh=force or not has_ca)

    sans = _server_sans(extra_hosts)
    if force or not _server_is_current(pki, ca_cert, sans):
        cert, key = _make_leaf(
            ca_cert, ca_key, "telemetry-broker", ExtendedKeyUsageOID.SERVER_AUTH, sans
        )
        _save(cert, key, pki.server_cert, pki.server_key)

    has_services_ca = pki.services_ca_file.is_file() and pki.services_ca_key_file.is_file()
    if force or not has_services_ca:
        svc_cert, svc_key = _make_ca("charger-telemetry dev services CA")
        _save(svc_cert, svc_key, pki.services_ca_file, pki.services_ca_key_file)
    else:
        svc_cert, svc_key = load_ca(pki, services=True)
    _ensure_crl(
        pki,
        svc_cert,
        svc_key,
        fresh=force or not has_services_ca,
        crl_file=pki.services_crl_file,
    )

    if force:
        for name in client_names(pki):
            if name not in SERVICE_IDENTITIES:
                _issue(pki, name, ca_cert, ca_key)
    for service in sorted(SERVICE_IDENTITIES):
        crt = pki.client_paths(service)[0]
        wanted = service != OPERATOR_IDENTITY or crt.is_file()  # the operator's: on request
        stale = not crt.is_file() or not _issued_by(crt, svc_cert) or is_revoked(pki, crt)
        if wanted and (force or stale):
            _issue(pki, service, svc_cert, svc_key)
    return pki


def client_names(pki: Pki) -> list[str]:
    """Names of the client certificates present in the directory (bridge included)."""
    return sorted(
        p.stem
        for p in pki.dir.glob("*.crt")
        if p.stem not in _NOT_CLIENTS and p.with_suffix(".key").is_file()
    )


def _issue(
    pki: Pki, name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    crt, key_path = pki.client_paths(name)
    cert, key = _make_leaf(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _save(cert, key, crt, key_path)
    return crt, key_path


def issue_client(directory: Path, name: str, *, reissue: bool = False) -> tuple[Path, Path]:
    """Issue client certificate ``name`` (CN = name) unless it exists and is not revoked;
    ``(cert, key)`` paths.

    Any allowed id may be used, the bridge identity included; gateways go through
    :func:`issue_gateway`, which refuses the reserved names. The services CA signs the
    :data:`SERVICE_IDENTITIES`, the CA every other name.
    """
    pki = Pki(Path(directory))
    check_id("client name", name)
    if name in _NOT_CLIENTS:
        raise ReservedNameError(name, "the CAs' and the broker's files")
    crt, key_path = pki.client_paths(name)
    ca_cert, ca_key = load_ca(pki, services=name in SERVICE_IDENTITIES)
    current = crt.is_file() and key_path.is_file() and _issued_by(crt, ca_cert)
    if not reissue and current and not is_revoked(pki, crt):
        return crt, key_path
    return _issue(pki, name, ca_cert, ca_key)


def check_gateway_name(name: str) -> None:
    """Raise :class:`InvalidIdError` / :class:`ReservedNameError` unless ``name`` may be a
    gateway's id (and so its certificate's CN)."""
    check_id("gateway id", name)
    if name == BRIDGE_IDENTITY:
        raise ReservedNameError(name, "the bridge's identity, whose ACL reads every gateway")
    if name.lower() in RESERVED_GATEWAY_NAMES:  # ``CA`` is ``ca.crt`` on a case-insensitive disk
        raise ReservedNameError(name, "a PKI file name or a topic level the ACL reserves")


def issue_gateway(directory: Path, name: str, *, reissue: bool = False) -> tuple[Path, Path]:
    """Issue a gateway's certificate; the gateway id must be allowed and not reserved."""
    check_gateway_name(name)
    return issue_client(directory, name, reissue=reissue)
