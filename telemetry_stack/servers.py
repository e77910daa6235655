"""Server processes started from installed binaries, used by the test fixtures and by
``telemetry-stack up`` alike.

:class:`ManagedProcess` starts a command in its own session with its output in a log file, waits
until a readiness check passes (or fails with the log's last lines), and stops it by PID:
SIGTERM, then SIGKILL after a timeout. :func:`start_mosquitto` and :func:`start_influxd` build
the configuration of each server under a state directory and return the running process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from provisioning import broker_config
from provisioning.pki import Pki
from telemetry_common.errors import DependencyUnavailable, TelemetryError

log = logging.getLogger(__name__)

LOG_TAIL_LINES: Final = 30


class ServerBinaryMissing(TelemetryError):
    """An installed server binary (mosquitto, influxd) was not found."""

    def __init__(self, binary: str, package: str) -> None:
        super().__init__(
            f"{binary} not found on PATH nor in /usr/sbin: run `make bootstrap` "
            f"(or `apt-get install {package}`)"
        )
        self.binary = binary
        self.package = package


class ProcessNotReady(DependencyUnavailable):
    """A started process exited or did not become ready in time; carries its log's tail."""

    def __init__(self, name: str, detail: str, log_tail: str) -> None:
        super().__init__(name, f"{detail}\n--- last lines of its log ---\n{log_tail}")
        self.log_tail = log_tail


def find_binary(name: str, package: str) -> str:
    """Absolute path of an installed server binary, or :class:`ServerBinaryMissing`."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/usr/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerBinaryMissing(name, package)


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and stays likely free.

    Not one the OS would pick for ``bind(0)``: those come from the ephemeral
    range, which every outgoing connection also draws its source port from,
    so a port found free there can be taken by a client's connection before
    the server it was meant for binds it (CI saw exactly that). Ports below
    the ephemeral range are only ever taken by someone binding them on
    purpose; this process never hands the same one out twice.
    """
    low, high = _ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((10000, low - 1), (high + 1, 65535)) if hi - lo >= 1000]
    for _ in range(200 if spans else 0):
        lo, hi = random.choice(spans)  # noqa: S311 (not a secret)
        port = random.randint(lo, hi)  # noqa: S311
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our own URL)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid``, SIGKILL it if still alive after ``timeout``; True if it was running.

    For processes this process did not start (PIDs read from a state file); the caller checks
    the PID still belongs to the expected command (see :func:`pid_cmdline`).
    """
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    log.warning("pid %d ignored SIGTERM for %.0fs: sending SIGKILL", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
    return True


class ManagedProcess:
    """One server process: started in its own session, output to ``log_file``, stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_file = Path(log_file)
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        log.info("started %s (pid %d): %s", self.name, self._proc.pid, " ".join(self.argv))

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_tail(self.log_file, lines)

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
        """Return once ``check()`` is true; :class:`ProcessNotReady` if the process exits first
        or ``timeout`` seconds pass (the process is left running; the caller stops it)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ProcessNotReady(
                    self.name,
                    f"exited with code {self.returncode()} before it was ready "
                    f"(log: {self.log_file})",
                    self.log_tail(),
                )
            if check():
                return
            if time.monotonic() >= deadline:
                raise ProcessNotReady(
                    self.name,
                    f"not ready after {timeout:.0f}s (log: {self.log_file})",
                    self.log_tail(),
                )
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0fs: sending SIGKILL", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode


# --- Mosquitto ------------------------------------------------------------------------------


def start_mosquitto(
    state_dir: Path,
    pki: Pki,
    tls_port: int,
    local_port: int,
    topic_root: str,
    bind_host: str = "127.0.0.1",
    *,
    service_port: int,
    log_file: Path | None = None,
    timeout: float = 20.0,
) -> ManagedProcess:
    """Render the broker configuration under ``state_dir`` and start Mosquitto; returns once
    every listener accepts TCP connections (gateways ``tls_port``, services ``service_port``,
    plaintext ``local_port``)."""
    binary = find_binary("mosquitto", "mosquitto")
    state_dir = Path(state_dir).resolve()
    data_dir = state_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    files = broker_config.render(
        state_dir,
        pki_dir=Path(pki.dir).resolve(),
        tls_port=tls_port,
        local_port=local_port,
        service_port=service_port,
        persistence_dir=data_dir,
        topic_root=topic_root,
        bind_host=bind_host,
        # Started as root, Mosquitto would drop to user 'mosquitto', who cannot read our 0600 keys.
        run_as_user=broker_config.current_user() if os.geteuid() == 0 else None,
    )
    proc = ManagedProcess(
        "mosquitto",
        [binary, "-c", str(files.conf_file)],
        log_file=log_file or state_dir / "mosquitto.log",
    )
    proc.start()
    check_host = "127.0.0.1" if bind_host in {"0.0.0.0", "::", ""} else bind_host  # noqa: S104
    try:
        proc.wait_ready(
            lambda: (
                port_open(check_host, tls_port)
                and port_open(check_host, service_port)
                and port_open("127.0.0.1", local_port)
            ),
            timeout,
        )
    except BaseException:
        proc.stop()
        raise
    return proc


# --- InfluxDB 1.x ---------------------------------------------------------------------------

_INFLUXD_CONF = """\
# InfluxDB 1.x configuration written by telemetry_stack.servers.start_influxd.
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{meta}"

[data]
  dir = "{data}"
  wal-dir = "{wal}"
  query-log-enabled = false
{data_extra}
[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false

[subscriber]
  enabled = false
"""


def influxd_config(
    state_dir: Path,
    http_port: int,
    rpc_port: int,
    retention_check_interval: str | None = None,
    data_limits: Mapping[str, int] | None = None,
) -> str:
    """The configuration file; ``retention_check_interval`` (e.g. ``1s``; influxd's default
    is 30m) is how often expired shard groups are dropped (tests of retention shorten it);
    ``data_limits``: integer options of ``[data]`` such as ``max-values-per-tag`` or
    ``max-series-per-database`` (tests of cardinality refusals lower them)."""
    data_extra = "".join(f"  {k} = {int(v)}\n" for k, v in (data_limits or {}).items())
    conf = _INFLUXD_CONF.format(
        data_extra=data_extra,
        rpc_port=rpc_port,
        http_port=http_port,
        meta=state_dir / "meta",
        data=state_dir / "data",
        wal=state_dir / "wal",
    )
    if retention_check_interval is not None:
        conf += (
            f'\n[retention]\n  enabled = true\n  check-interval = "{retention_check_interval}"\n'
        )
    return conf


def start_influxd(
    state_dir: Path,
    http_port: int,
    *,
    rpc_port: int | None = None,
    log_file: Path | None = None,
    timeout: float = 30.0,
    retention_check_interval: str | None = None,
    data_limits: Mapping[str, int] | None = None,
) -> ManagedProcess:
    """Write an influxd.conf under ``state_dir`` and start InfluxDB 1.x on 127.0.0.1:http_port;
    returns once ``GET /ping`` answers 204 (``data_limits``: see :func:`influxd_config`)."""
    binary = find_binary("influxd", "influxdb")
    state_dir = Path(state_dir).resolve()
    for sub in ("meta", "data", "wal"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    if rpc_port is None:
        rpc_port = free_port()
        while rpc_port == http_port:
            rpc_port = free_port()
    conf = state_dir / "influxd.conf"
    conf.write_text(
        influxd_config(state_dir, http_port, rpc_port, retention_check_interval, data_limits),
        encoding="utf-8",
    )
    # influxd reads INFLUXDB_* variables over its file; keep ours authoritative.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    proc = ManagedProcess(
        "influxd",
        [binary, "run", "-config", str(conf)],
        env=env,
        log_file=log_file or state_dir / "influxd.log",
    )
    proc.start()
    url = f"http://127.0.0.1:{http_port}/ping"
    try:
        proc.wait_ready(lambda: http_status(url) == 204, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
