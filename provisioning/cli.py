"""The provisioning commands of ``telemetry-stack``: ``pki init|gateway|operator|revoke|sign|
token`` and ``broker-config`` (what docker compose's pki-init runs). :mod:`telemetry_stack.cli`
mounts them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from provisioning import broker_config, enrollment
from provisioning import pki as pki_mod
from telemetry_common.errors import TelemetryError
from telemetry_common.topics import DEFAULT_ROOT

pki_app = typer.Typer(help="A development CA, the broker's and clients' certificates.")

PkiDir = Annotated[Path, typer.Option("--dir", help="The PKI directory.")]


def fail(exc: Exception, code: int = 2) -> typer.Exit:
    """Print ``exc`` as the command's error and return the exit to raise."""
    typer.echo(f"telemetry-stack: {exc}", err=True)
    return typer.Exit(code)


@pki_app.command("init")
def pki_init(
    directory: PkiDir = Path(".stack/pki"),
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Extra broker host name or IP for the server certificate."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing CA (every certificate is re-issued).")
    ] = False,
) -> None:
    """Create the dev CA, the broker's certificate and the bridge's; keeps an existing CA."""
    try:
        made = pki_mod.init(directory, extra_hosts=host or [], force=force)
    except TelemetryError as exc:
        raise fail(exc) from exc
    typer.echo(f"PKI in {made.dir}: ca.crt, server.crt, {pki_mod.BRIDGE_IDENTITY}.crt")


@pki_app.command("gateway")
def pki_gateway(
    name: Annotated[str, typer.Argument(help="The gateway id (= certificate CN = MQTT user).")],
    directory: PkiDir = Path(".stack/pki"),
) -> None:
    """Issue a gateway's client certificate (kept if it exists and is not revoked)."""
    _print_issued(lambda: pki_mod.issue_gateway(directory, name))


@pki_app.command("operator")
def pki_operator(directory: PkiDir = Path(".stack/pki")) -> None:
    """Issue the operator's certificate (CN telemetry-operator): it may send commands to every
    gateway on {root}/+/cmd/# and read their answers (kept if it exists)."""
    _print_issued(lambda: pki_mod.issue_client(directory, pki_mod.OPERATOR_IDENTITY))


def _print_issued(issue: Callable[[], tuple[Path, Path]]) -> None:
    """Print the certificate and key paths ``issue()`` returns, or fail with its error."""
    try:
        cert, key = issue()
    except (TelemetryError, ValueError) as exc:
        raise fail(exc) from exc
    typer.echo(f"{cert}\n{key}")


@pki_app.command("revoke")
def pki_revoke(
    name: Annotated[str, typer.Argument(help="The client (gateway) whose certificate to revoke.")],
    directory: PkiDir = Path(".stack/pki"),
) -> None:
    """Revoke a client certificate: add it to the CA's CRL (crl.pem). The broker rereads the CRL
    on SIGHUP for new connections; `telemetry-stack restart mosquitto` also drops a connection the
    revoked client already has. `pki gateway NAME` then issues it a new certificate."""
    try:
        done = pki_mod.revoke(directory, name)
    except (TelemetryError, ValueError) as exc:
        raise fail(exc) from exc
    verb = "was already revoked" if done.already else "revoked"
    typer.echo(
        f"{name} {verb} (serial {done.serial:#x}) in {done.crl_file}\n"
        "restart the broker to apply it and drop the client's open connection: "
        "telemetry-stack restart mosquitto"
    )


@pki_app.command("sign")
def pki_sign(
    csr: Annotated[Path, typer.Argument(help="The gateway's CSR (PEM), made by the gateway.")],
    gateway: Annotated[str, typer.Option("--gateway", help="The gateway id the CSR must name.")],
    directory: PkiDir = Path(".stack/pki"),
    days: Annotated[
        float, typer.Option(help="Lifetime of the certificate (the agent renews it).")
    ] = enrollment.ENROLLED_DAYS,
    out: Annotated[
        Path | None, typer.Option(help="Also write the certificate + CA chain here.")
    ] = None,
) -> None:
    """Check a gateway's CSR (CN = --gateway, no SANs or extensions, EC P-256+ / RSA >= 2048)
    and sign it offline: clientAuth only, not a CA. Prints the certificate's path."""
    try:
        signed = enrollment.sign_csr(directory, csr.read_bytes(), gateway, days=days)
        if out is not None:
            out.write_bytes(signed.chain_pem)
    except (TelemetryError, ValueError, OSError) as exc:
        raise fail(exc) from exc
    typer.echo(f"{out or signed.cert_file}")


@pki_app.command("token")
def pki_token(
    gateway: Annotated[str, typer.Argument(help="The gateway id the token may enrol.")],
    directory: PkiDir = Path(".stack/pki"),
    ttl: Annotated[
        str, typer.Option(help="How long the token is valid (90s, 30m, 24h, 7d).")
    ] = "24h",
) -> None:
    """Make a one-time enrollment token for gateway ID (for `edge-agent enroll --token`).
    It is printed once; only its hash is kept, in the PKI directory."""
    try:
        token = enrollment.Tokens(directory).create(gateway, enrollment.parse_ttl(ttl))
    except (TelemetryError, ValueError, OSError) as exc:
        raise fail(exc) from exc
    typer.echo(token)


def broker_config_cmd(
    out: Annotated[Path, typer.Option(help="Directory to write mosquitto.conf, acl, passwd.")],
    pki_dir: Annotated[str, typer.Option(help="The PKI directory as Mosquitto sees it.")],
    tls_port: Annotated[int, typer.Option(help="TLS listener port of the gateways.")] = 8883,
    local_port: Annotated[int, typer.Option(help="Plaintext listener port (127.0.0.1).")] = 1883,
    service_port: Annotated[
        int, typer.Option(help="TLS listener port of the services (bridges, API, operator).")
    ] = 8884,
    bind_host: Annotated[str, typer.Option(help="Address of the TLS listeners.")] = "127.0.0.1",
    persistence_dir: Annotated[
        str, typer.Option(help="Persistence directory as Mosquitto sees it.")
    ] = "/mosquitto/data",
    topic_root: Annotated[str, typer.Option(help="MQTT topic root.")] = DEFAULT_ROOT,
    run_as_user: Annotated[
        str | None, typer.Option(help="Mosquitto's `user` (default: not set).")
    ] = None,
) -> None:
    """Render the broker configuration (for docker compose)."""
    try:
        files = broker_config.render(
            out,
            pki_dir=pki_dir,
            tls_port=tls_port,
            local_port=local_port,
            service_port=service_port,
            persistence_dir=persistence_dir,
            topic_root=topic_root,
            bind_host=bind_host,
            run_as_user=run_as_user,
        )
    except (TelemetryError, ValueError) as exc:
        raise fail(exc) from exc
    typer.echo(f"{files.conf_file}\n{files.acl_file}\n{files.password_file}")
