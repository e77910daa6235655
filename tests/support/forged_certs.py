"""Client certificates a PKI's own rules would never issue (expired, CN with wildcards or a
slash), signed directly with a CA's key, for tests of what the broker refuses."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import pki as pki_mod


def sign_with_ca(
    pki_dir: Path,
    out: Path,
    cn: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    dns_names: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A client certificate for ``cn`` (and ``dns_names`` as SANs) signed with the CA key in
    ``pki_dir`` (bypassing the PKI's name rules), valid from ``not_before`` to ``not_after``;
    written under ``out``."""
    ca_cert = pki_mod.load_cert(pki_dir / "ca.crt")
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if dns_names:
        sans = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
        builder = builder.add_extension(sans, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    stem = out / uuid.uuid4().hex[:8]
    crt, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_file
