"""``telemetry-stack``: run the whole pipeline locally from installed binaries (or, with
``--docker``, through docker compose); its ``pki`` and ``broker-config`` commands come from
:mod:`provisioning.cli`."""

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

from provisioning import broker_config
from provisioning.cli import broker_config_cmd, fail, pki_app
from telemetry_common.errors import TelemetryError
from telemetry_common.topics import DEFAULT_ROOT
from telemetry_stack import stack, supervisor
from telemetry_stack.deadletters_cli import deadletters_app

app = typer.Typer(
    help="Run the charger-telemetry stack locally; make its dev PKI and broker configuration.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(pki_app, name="pki")
app.command("broker-config")(broker_config_cmd)
app.add_typer(deadletters_app, name="deadletters")

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where the stack keeps its state, logs and stack.json.")
]
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


# --- up / down / status / restart -------------------------------------------------------------


def _docker_compose(args: list[str]) -> None:
    """Hand over to `docker compose` in the checkout that holds docker-compose.yml."""
    docker = shutil.which("docker")
    if docker is None or subprocess.call(
        [docker, "compose", "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ):
        raise fail(RuntimeError("--docker needs docker with the compose plugin"))
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
        raise fail(exc) from exc
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
        for line in supervisor.down(resolved):
            typer.echo(line)
        typer.echo("everything stopped")


def _watch(state_dir: Path) -> None:
    """Block; report a service that exits (a `restart` from another shell is not an exit), and
    rotate the services' logs past ``supervisor.LOG_MAX_BYTES``."""
    down_before: set[str] = set()
    reported: set[str] = set()
    while True:
        time.sleep(1.0)
        supervisor.rotate_logs(state_dir)
        services = supervisor.status(state_dir)
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
        for line in supervisor.down(state_dir.resolve()):
            typer.echo(line)
    except TelemetryError as exc:
        raise fail(exc) from exc


@app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each service: running or not, ready or not, pid. Exit code 3 if any is not running.
    Rotates the logs past their size, like a stack in the foreground does every second (run
    it from cron for a --detach stack)."""
    try:
        supervisor.rotate_logs(state_dir.resolve())
        services = supervisor.status(state_dir.resolve())
    except TelemetryError as exc:
        raise fail(exc) from exc
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
        pid = supervisor.restart(state_dir.resolve(), service)
    except TelemetryError as exc:
        raise fail(exc) from exc
    typer.echo(f"{service} restarted (pid {pid})")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
