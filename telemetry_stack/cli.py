"""``telemetry-stack``: run the whole pipeline locally from installed binaries (or, with
``--docker``, through docker compose), and make its dev PKI and broker configuration."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from telemetry_common.errors import TelemetryError
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack import broker_config, stack
from telemetry_stack import pki as pki_mod

app = typer.Typer(
    help="Run the charger-telemetry stack locally; make its dev PKI and broker configuration.",
    no_args_is_help=True,
    add_completion=False,
)
pki_app = typer.Typer(help="A development CA, the broker's and clients' certificates.")
app.add_typer(pki_app, name="pki")

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where the stack keeps its state, logs and stack.json.")
]
PkiDir = Annotated[Path, typer.Option("--dir", help="The PKI directory.")]
DEFAULT_STATE = Path(".stack")


@app.callback()
def _root(
    ctx: typer.Context,
    docker: Annotated[
        bool, typer.Option("--docker", help="up/down through docker compose instead.")
    ] = False,
) -> None:
    ctx.obj = {"docker": docker}


def _docker_wanted(ctx: typer.Context, flag: bool) -> bool:
    return flag or bool((ctx.obj or {}).get("docker"))


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    typer.echo(f"telemetry-stack: {exc}", err=True)
    return typer.Exit(code)


# --- pki --------------------------------------------------------------------------------------


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
        raise _fail(exc) from exc
    typer.echo(f"PKI in {made.dir}: ca.crt, server.crt, {pki_mod.BRIDGE_IDENTITY}.crt")


@pki_app.command("gateway")
def pki_gateway(
    name: Annotated[str, typer.Argument(help="The gateway id (= certificate CN = MQTT user).")],
    directory: PkiDir = Path(".stack/pki"),
) -> None:
    """Issue a gateway's client certificate (kept if it exists and is not revoked)."""
    try:
        cert, key = pki_mod.issue_gateway(directory, name)
    except (TelemetryError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"{cert}\n{key}")


@pki_app.command("operator")
def pki_operator(directory: PkiDir = Path(".stack/pki")) -> None:
    """Issue the operator's certificate (CN telemetry-operator): it may send commands to every
    gateway on {root}/+/cmd/# and read their answers (kept if it exists)."""
    try:
        cert, key = pki_mod.issue_client(directory, pki_mod.OPERATOR_IDENTITY)
    except (TelemetryError, ValueError) as exc:
        raise _fail(exc) from exc
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
        raise _fail(exc) from exc
    verb = "was already revoked" if done.already else "revoked"
    typer.echo(
        f"{name} {verb} (serial {done.serial:#x}) in {done.crl_file}\n"
        "restart the broker to apply it and drop the client's open connection: "
        "telemetry-stack restart mosquitto"
    )


# --- broker-config ----------------------------------------------------------------------------


@app.command("broker-config")
def broker_config_cmd(
    out: Annotated[Path, typer.Option(help="Directory to write mosquitto.conf, acl, passwd.")],
    pki_dir: Annotated[str, typer.Option(help="The PKI directory as Mosquitto sees it.")],
    tls_port: Annotated[int, typer.Option(help="TLS listener port.")] = 8883,
    local_port: Annotated[int, typer.Option(help="Plaintext listener port (127.0.0.1).")] = 1883,
    bind_host: Annotated[str, typer.Option(help="Address of the TLS listener.")] = "127.0.0.1",
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
            persistence_dir=persistence_dir,
            topic_root=topic_root,
            bind_host=bind_host,
            run_as_user=run_as_user,
        )
    except (TelemetryError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"{files.conf_file}\n{files.acl_file}\n{files.password_file}")


# --- up / down / status / restart -------------------------------------------------------------


def _docker_compose(args: list[str]) -> None:
    """Hand over to `docker compose` in the checkout that holds docker-compose.yml."""
    docker = shutil.which("docker")
    if docker is None or subprocess.call(
        [docker, "compose", "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ):
        raise _fail(RuntimeError("--docker needs docker with the compose plugin"))
    root = broker_config.TEMPLATE_DIR.parent
    typer.echo(f"using docker compose in {root}: docker compose {' '.join(args)}")
    raise typer.Exit(subprocess.call([docker, "compose", *args], cwd=root))


def _print_ready(state: dict[str, Any], state_dir: Path) -> None:
    api = state["api"]
    mqtt = state["mqtt"]
    typer.echo("")
    typer.echo(f"API:      {api['url']}   (docs: {api['url']}/docs)")
    typer.echo(f"InfluxDB: {state['influx']['url']}  database {state['influx']['database']}")
    typer.echo(
        f"MQTT:     mqtts://127.0.0.1:{mqtt['tls_port']}  "
        f"(live feed: mosquitto_sub -p {mqtt['local_port']} -t '{state['topic_root']}/live/#' -v)"
    )
    typer.echo(f"State:    {state_dir}/stack.json, logs in {state_dir}/logs/")
    url = f"{api['url']}/v1/chargers/gw-1-cp001/latest"
    key = shlex.quote(f"X-API-Key: {api['keys']['read']}")
    typer.echo(f"\ncurl -sS -H {key} {url}")


@app.command()
def up(
    ctx: typer.Context,
    state_dir: StateDir = DEFAULT_STATE,
    gateways: Annotated[int, typer.Option(min=0, help="Simulated gateways (0: none).")] = 1,
    chargers: Annotated[int, typer.Option(min=1, help="Simulated chargers per gateway.")] = 2,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between readings.")] = 1.0,
    topic_root: Annotated[str, typer.Option(help="MQTT topic root.")] = DEFAULT_ROOT,
    detach: Annotated[bool, typer.Option(help="Return once every service is ready.")] = False,
    docker: Annotated[bool, typer.Option(help="Use docker compose instead.")] = False,
) -> None:
    """Start Mosquitto, InfluxDB, the bridge, the API and N simulated gateways.

    In the foreground Ctrl-C (or SIGTERM) stops everything; --detach leaves it running
    (`telemetry-stack down` stops it)."""
    if _docker_wanted(ctx, docker):
        _docker_compose(["up", "--build", *(["--detach"] if detach else [])])
    opts = stack.UpOptions(
        state_dir=state_dir,
        gateways=gateways,
        chargers=chargers,
        interval_s=interval,
        topic_root=topic_root,
    )
    resolved = state_dir.resolve()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        state = stack.up(opts, typer.echo)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except TelemetryError as exc:
        raise _fail(exc) from exc
    _print_ready(state, resolved)
    if detach:
        typer.echo("\nrunning in the background: `telemetry-stack down` stops it")
        return
    typer.echo("\nrunning; Ctrl-C stops everything")
    try:
        _watch(resolved)
    except KeyboardInterrupt:
        typer.echo("\nstopping (reverse order)...")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for line in stack.down(resolved):
            typer.echo(line)
        typer.echo("everything stopped")


def _watch(state_dir: Path) -> None:
    """Block; report a service that exits (a `restart` from another shell is not an exit)."""
    down_before: set[str] = set()
    reported: set[str] = set()
    while True:
        time.sleep(1.0)
        services = stack.status(state_dir)
        down_now = {name for name, info in services.items() if not info["running"]}
        # Twice in a row: a restart from another shell briefly has no process.
        for name in sorted(down_now & down_before - reported):
            typer.echo(
                f"warning: {name} is not running (log: {services[name]['log_file']})", err=True
            )
        reported = (reported & down_now) | (down_now & down_before)
        down_before = down_now


@app.command()
def down(
    ctx: typer.Context,
    state_dir: StateDir = DEFAULT_STATE,
    docker: Annotated[bool, typer.Option(help="Use docker compose instead.")] = False,
) -> None:
    """Stop every service of the stack, in reverse start order, by its recorded PID."""
    if _docker_wanted(ctx, docker):
        _docker_compose(["down"])
    try:
        for line in stack.down(state_dir.resolve()):
            typer.echo(line)
    except TelemetryError as exc:
        raise _fail(exc) from exc


@app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each service: running or not, ready or not, pid. Exit code 3 if any is not running."""
    try:
        services = stack.status(state_dir.resolve())
    except TelemetryError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({"services": services}, indent=2))
    else:
        for name, info in services.items():
            word = "ready" if info["ready"] else "running" if info["running"] else "stopped"
            pid = f"pid {info['pid']}" if info["pid"] else ""
            typer.echo(f"{name:<12} {word:<8} {pid}")
    if not all(info["running"] for info in services.values()):
        raise typer.Exit(3)


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="mosquitto, influxd, bridge, api or gateway-N.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Stop one service and start it again with the same command and environment."""
    try:
        pid = stack.restart(state_dir.resolve(), service)
    except TelemetryError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{service} restarted (pid {pid})")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
