"""``telemetry-stack pki token`` and ``pki sign``: the token printed once and usable, a CSR
signed offline, a refused one with its reason and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from provisioning import enrollment, pki
from telemetry_stack.cli import app
from tests.support.csrs import csr, custom_csr


def test_token_is_printed_once_and_redeemable(tmp_path: Path) -> None:
    made = pki.init(tmp_path / "pki")
    result = CliRunner().invoke(app, ["pki", "token", "gw-1", "--dir", str(made.dir)])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    signed = enrollment.Tokens(made.dir).redeem(token, csr("gw-1"), days=1)
    assert signed.gateway_id == "gw-1"


def test_token_for_a_reserved_name_or_with_a_bad_ttl_is_refused(tmp_path: Path) -> None:
    made = pki.init(tmp_path / "pki")
    reserved = CliRunner().invoke(app, ["pki", "token", "telemetry-bridge", "--dir", str(made.dir)])
    assert reserved.exit_code == 2
    assert "reserved" in reserved.output
    bad = CliRunner().invoke(app, ["pki", "token", "gw-1", "--ttl", "soon", "--dir", str(made.dir)])
    assert bad.exit_code == 2
    assert "invalid duration" in bad.output


def test_sign_writes_the_certificate_or_names_the_refusal(tmp_path: Path) -> None:
    made = pki.init(tmp_path / "pki")
    good, wild = tmp_path / "good.csr", tmp_path / "wild.csr"
    good.write_bytes(csr("gw-1"))
    wild.write_bytes(custom_csr("*.example.com"))
    out = tmp_path / "gw-1-chain.pem"
    argv = ["pki", "sign", str(good), "--gateway", "gw-1", "--dir", str(made.dir)]
    result = CliRunner().invoke(app, [*argv, "--days", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    chain = x509.load_pem_x509_certificates(out.read_bytes())
    assert chain[1] == pki.load_cert(made.ca_file)
    refused = CliRunner().invoke(
        app, ["pki", "sign", str(wild), "--gateway", "gw-1", "--dir", str(made.dir)]
    )
    assert refused.exit_code == 2
    assert "wildcard CN" in refused.output
