"""Certificate signing requests for enrollment tests: good ones and each kind the CA refuses."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from edge_agent.enroll import make_csr, make_key


def csr(gateway_id: str) -> bytes:
    """A CSR the CA signs for ``gateway_id`` (the agent's own: EC P-256, CN only)."""
    return make_csr(make_key(), gateway_id)


def custom_csr(
    cn: str,
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    sans: list[str] | None = None,
    ca: bool = False,
) -> bytes:
    """A CSR for ``cn`` with the given key (default EC P-256), DNS SANs or a CA request."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    signer = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    request = builder.sign(signer, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def weak_rsa_csr(cn: str) -> bytes:
    """A CSR with a 1024-bit RSA key (weak on purpose: the CA must refuse it)."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    return custom_csr(cn, key=weak)


def bad_signature_csr(cn: str) -> bytes:
    """A CSR for ``cn`` whose signature no longer matches its content (last byte flipped)."""
    der = bytearray(x509.load_pem_x509_csr(csr(cn)).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
