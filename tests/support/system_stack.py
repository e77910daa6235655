"""Drive a whole local stack the way an operator does (``telemetry-stack up/restart/down``) and
account for every reading: what the edge accepted, what InfluxDB stored, what is still held.

The oracle: a gateway's outbox gives each accepted reading the next ``seq`` (SQLite
AUTOINCREMENT, dense from 1, persisted), so the readings it accepted are seq 1..high, where high
is the outbox's ``sqlite_sequence``. A reading is *lost* if it is neither stored in InfluxDB nor
still held by the outbox (unsent or parked) nor dropped by the documented budget policy. Dropped
readings are compared by seq (the outbox lists them: ``dropped_seqs``), not by count, so a drop
counted although the reading was stored cannot hide a real loss of the same size.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from pydantic_settings import BaseSettings

from bridge.settings import BridgeSettings
from edge_agent.settings import EdgeSettings
from telemetry_common.settings import env_for
from telemetry_stack.servers import pid_alive
from telemetry_stack.state import load_state, save_state

BIN = Path(sys.executable).parent
#: The fault and security suites confirm gaps against InfluxDB after 2 s instead of 30.
GAP_GRACE_S = 2
FAST_GAPS_ENV = env_for(BridgeSettings, gap_grace_s=GAP_GRACE_S)


def gateway_services(count: int) -> list[str]:
    """The names `telemetry-stack up --gateways COUNT` gives its simulated gateways."""
    return [f"gateway-{i}" for i in range(1, count + 1)]


@dataclass
class Account:
    """One gateway's readings, counted as the issue asks."""

    gateway: str
    accepted: int
    stored: int
    stored_points: int
    held: int
    dropped: int
    lost: list[int]
    #: Seqs the outbox lists as dropped although InfluxDB stores them (an over-count).
    overcounted: list[int] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Points stored more than once (a replay must overwrite itself, not add a point)."""
        return self.stored_points - self.stored

    def line(self) -> str:
        over = len(self.overcounted)
        return (
            f"{self.gateway}: accepted {self.accepted}, stored {self.stored}, "
            f"duplicates {self.duplicates}, still held {self.held}, dropped by policy "
            f"{self.dropped}, lost {len(self.lost)}"
            + (f", counted as dropped but stored {over}" if over else "")
        )


class SystemStack:
    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.dir = state_dir
        self.env = {**os.environ, **(env or {})}
        self.state: dict[str, Any] = {}

    # -- lifecycle, through the CLI ----------------------------------------------------------
    def _cli(self, *args: str, timeout: float = 120) -> str:
        argv = [str(BIN / "telemetry-stack"), *args, "--state-dir", str(self.dir)]
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def up(self, gateways: int, chargers: int, interval_s: float = 0.2) -> None:
        self._cli(
            "up", "--detach", "--gateways", str(gateways), "--chargers", str(chargers),
            "--interval", str(interval_s),
        )  # fmt: skip
        self.reload()

    @contextlib.contextmanager
    def running(self, gateways: int, chargers: int, interval_s: float = 0.2) -> Iterator[Self]:
        """:meth:`up`, then :meth:`down` however the block ends; a stack that cannot start
        here (a server binary missing) skips the test with the reason."""
        try:
            self.up(gateways, chargers, interval_s)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            self.down()
            if "not installed" in str(exc) or "missing" in str(exc):
                pytest.skip(f"the stack cannot start here: {exc}")
            raise
        try:
            yield self
        finally:
            self.down()

    @property
    def ca_file(self) -> Path:
        """The CA certificate the stack's broker and clients trust."""
        return Path(self.state["mqtt"]["ca_file"])

    def reload(self) -> None:
        self.state = json.loads((self.dir / "stack.json").read_text())

    def down(self) -> None:
        if (self.dir / "stack.json").exists():
            self._cli("down")

    def restart(self, service: str) -> None:
        self._cli("restart", service)
        self.reload()

    def pid(self, service: str) -> int:
        self.reload()
        pid = self.state["services"][service]["pid"]
        assert pid, f"{service} is not running"
        return int(pid)

    def kill(self, service: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the service and wait (bounded) until it is gone."""
        pid = self.pid(service)
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), f"{service} (pid {pid}) did not exit after {sig.name}"

    def stop(self, service: str) -> None:
        self.kill(service, signal.SIGTERM)

    @contextlib.contextmanager
    def paused(self, service: str) -> Iterator[None]:
        """The service frozen (SIGSTOP, by its PID) for the block, then continued (SIGCONT): it
        takes nothing from its connections meanwhile yet keeps its listening ports, which a
        stopped service could lose to another process on a shared machine before its restart."""
        pid = self.pid(service)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    # -- reading the state -------------------------------------------------------------------
    def influx(self, q: str) -> list[dict[str, Any]]:
        url = self.state["influx"]["url"]
        db = self.state["influx"]["database"]
        r = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"}, timeout=30)
        r.raise_for_status()
        return list(r.json()["results"][0].get("series", []))

    def stored_seqs(self, gateway: str) -> tuple[set[int], int]:
        """Distinct seqs stored for ``gateway`` and the number of points holding them."""
        series = self.influx(f"SELECT seq FROM readings WHERE gateway_id = '{gateway}'")
        seqs = [int(row[1]) for s in series for row in s["values"]]
        return set(seqs), len(seqs)

    def outbox(self, gateway: str) -> Path:
        return self.dir / "edge" / f"{gateway}.sqlite3"

    def held_seqs(self, gateway: str) -> tuple[int, set[int], int]:
        """(highest seq ever assigned, seqs still held (unsent or parked), dropped by policy).
        An outbox the agent is still creating holds nothing yet."""
        db = sqlite3.connect(f"file:{self.outbox(gateway)}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"sqlite_sequence", "outbox"} <= tables:
                return 0, set(), 0
            high_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
            high = int((high_row.fetchone() or (0,))[0])
            held = {int(r[0]) for r in db.execute("SELECT seq FROM outbox")}
            if "parked" in tables:
                cols = [r[1] for r in db.execute("PRAGMA table_info(parked)")]
                if "seq" in cols:
                    held |= {int(r[0]) for r in db.execute("SELECT seq FROM parked")}
            dropped = 0
            if "dropped" in tables:
                dropped = int(db.execute("SELECT COALESCE(SUM(n), 0) FROM dropped").fetchone()[0])
        finally:
            db.close()
        return high, held, dropped

    def dropped_seqs(self, gateway: str) -> tuple[set[int], set[int], int]:
        """(seqs the outbox lists as dropped, seqs the budget dropped while their batch awaits
        its PUBACK (delivered or counted later), dropped readings no longer listed: the oldest
        beyond the outbox's limit, or all of an outbox too old to list them)."""
        db = sqlite3.connect(f"file:{self.outbox(gateway)}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if "dropped_seqs" not in tables:
                n = 0
                if "dropped" in tables:
                    sql = "SELECT coalesce(sum(n), 0) FROM dropped WHERE reason != ?"
                    n = int(db.execute(sql, ("disk_full_refused",)).fetchone()[0])
                return set(), set(), n
            listed = {
                s
                for first, last in db.execute("SELECT first_seq, last_seq FROM dropped_seqs")
                for s in range(int(first), int(last) + 1)
            }
            in_flight: set[int] = set()
            if "dropped_in_flight" in tables:
                in_flight = {int(r[0]) for r in db.execute("SELECT seq FROM dropped_in_flight")}
            row = db.execute("SELECT unlisted FROM totals").fetchone()
            unlisted = int(row[0]) if row else 0  # no row yet: the agent is creating it
        finally:
            db.close()
        return listed, in_flight, unlisted

    def account(self, gateway: str) -> Account:
        high, held, dropped = self.held_seqs(gateway)
        stored, points = self.stored_seqs(gateway)
        listed, in_flight, unlisted = self.dropped_seqs(gateway)
        lost = sorted(set(range(1, high + 1)) - stored - held - listed - in_flight)
        # Drops the outbox no longer lists (the oldest) are accounted by count.
        lost = lost[unlisted:]
        overcounted = sorted(listed & stored)
        return Account(gateway, high, len(stored), points, len(held), dropped, lost, overcounted)

    def wait_delivered(self, gateways: list[str], timeout: float) -> list[Account]:
        """Poll until every accepted reading is stored or held (bounded); the last accounts."""
        deadline = time.monotonic() + timeout
        while True:
            accounts = [self.account(gw) for gw in gateways]
            if all(not a.lost for a in accounts) or time.monotonic() > deadline:
                return accounts
            time.sleep(0.5)

    def bridge_status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.state['bridge']['url']}/status", timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def api_get(self, path: str) -> httpx.Response:
        api = self.state["api"]
        return httpx.get(
            f"{api['url']}{path}", headers={"X-API-Key": api["keys"]["read"]}, timeout=10
        )

    # -- reconfiguring and adding services (through stack.json, as `restart` reads it) --------
    def set_env(self, service: str, env: dict[str, str]) -> None:
        """Put ``env`` on top of a service's recorded environment in stack.json; it applies from
        the service's next ``restart``."""
        state = load_state(self.dir)
        state["services"][service]["env"].update(env)
        save_state(self.dir, state)
        self.reload()

    def add_service(
        self, name: str, like: str, env: dict[str, str], ready: dict[str, Any] | None = None
    ) -> None:
        """Record a copy of service ``like`` as ``name`` (``env`` on top, its own log file and
        readiness check) and start it with ``telemetry-stack restart NAME``. It is recorded
        last, so ``down`` stops it first, by its pid, with the rest."""
        state = load_state(self.dir)
        record = dict(state["services"][like])
        record.update(
            pid=None,
            env={**record["env"], **env},
            log_file=str(self.dir / "logs" / f"{name}.log"),
            ready=ready if ready is not None else record["ready"],
        )
        state["services"][name] = record
        save_state(self.dir, state)
        self.restart(name)

    def service_setting(self, service: str, settings: type[BaseSettings], name: str) -> str:
        """The value of setting ``name`` (of the model ``settings``) in a service's recorded
        environment."""
        (variable,) = env_for(settings, **{name: ""})
        return str(self.state["services"][service]["env"][variable])

    def http_json(self, url: str) -> dict[str, Any]:
        r = httpx.get(url, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    # -- extra gateways (edge agents this test starts itself) ---------------------------------
    def agent_env(self, gateway: str, port: int, **extra: object) -> dict[str, str]:
        """The environment of an edge agent for ``gateway`` (its certificate is issued here)
        whose MQTT connection goes to ``port`` (a FaultProxy, or the broker itself), its
        outbox where :meth:`account` looks; ``extra`` are more EdgeSettings, e.g.
        ``outbox={"max_rows": 300}``."""
        pki_dir = Path(self.state["pki_dir"])
        subprocess.run(
            [str(BIN / "telemetry-stack"), "pki", "gateway", gateway, "--dir", str(pki_dir)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        settings: dict[str, object] = {
            "gateway_id": gateway,
            "outbox_path": self.outbox(gateway),
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "ca_file": self.ca_file,
                "cert_file": pki_dir / f"{gateway}.crt",
                "key_file": pki_dir / f"{gateway}.key",
                "keepalive_s": 5,
            },
            "reconnect_max_s": 2,
            "topic_root": self.state["topic_root"],
        }
        return {**os.environ, **env_for(EdgeSettings, **(settings | extra))}

    def start_agent(
        self, env: dict[str, str], log: Path, *args: str, stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        """``edge-agent run ARGS`` with ``env`` (see :meth:`agent_env`), output to ``log``; the
        caller stops it with :func:`stop_process`."""
        (self.dir / "edge").mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                [str(BIN / "edge-agent"), "run", *args],
                env=env,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM a process this test started, SIGKILL it after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return int(proc.returncode)
