"""The package in a clean Debian 12 root (``debootstrap --variant=minbase``, plus python3): it
installs with ``dpkg -i`` (user, state directory, unit enabled), the installed
``/usr/bin/edge-agent`` run as the ``charger-telemetry`` user inside the chroot reads its
``/etc/charger-telemetry/edge.env`` and publishes over TLS to the test stack's Mosquitto (a chroot
shares the host's loopback), the bridge stores its readings in InfluxDB; an upgrade keeps the
outbox, the key and the edited edge.env; ``dpkg -r`` keeps the state, ``dpkg -P`` removes it.

Needs root (debootstrap, chroot) and a Debian mirror the first time: the root is cached as a
tarball under ``.stack/cache/debootstrap`` (``--make-tarball`` once, ``--unpack-tarball`` after;
~20 s to make on a fast mirror, ~30 s to unpack). Without root, debootstrap or the mirror, the
test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from telemetry_stack.servers import ManagedProcess
from tests.integration.package.conftest import CACHE, build_deb, tool
from tests.support.fixtures import BrokerInfo, InfluxTarget
from tests.support.influx import influxql
from tests.support.processes import BIN, Procs, start_api, start_bridge
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUITE = "bookworm"
MIRROR = os.environ.get("TELEMETRY_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
STATE = "var/lib/charger-telemetry"
ENV_FILE = "etc/charger-telemetry/edge.env"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _mounted_under(root: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]


def debootstrap(tmp_path_factory: pytest.TempPathFactory, include: tuple[str, ...]) -> Path:
    """A fresh minbase Debian root with ``include``, unpacked from its cached tarball (made on
    the first call); skips the test, with the reason, without root, debootstrap or a mirror."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root: run this test as root (CI does)")
    debootstrap = tool("debootstrap")  # scripts/bootstrap.sh installs it
    base = tmp_path_factory.mktemp("debian")
    root = base / "root"
    options = ["--variant=minbase", f"--include={','.join(include)}"]
    tarball = CACHE / "debootstrap" / f"{SUITE}-minbase-{'-'.join(include)}.tgz"
    started = time.monotonic()
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name(tarball.name + ".partial")
        made = subprocess.run(
            [debootstrap, *options, f"--make-tarball={partial}", SUITE, str(base / "w"), MIRROR],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        shutil.rmtree(base / "w", ignore_errors=True)
        if made.returncode:
            pytest.skip(f"debootstrap --make-tarball from {MIRROR} failed: {made.stderr[-800:]}")
        partial.rename(tarball)
        print(f"debootstrap --make-tarball: {time.monotonic() - started:.0f} s", file=sys.stderr)
        started = time.monotonic()
    unpacked = subprocess.run(
        [debootstrap, *options, f"--unpack-tarball={tarball}", SUITE, str(root), MIRROR],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if unpacked.returncode:
        pytest.skip(f"debootstrap --unpack-tarball failed: {unpacked.stderr[-800:]}")
    print(f"debootstrap --unpack-tarball: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return root


def remove_root(root: Path) -> None:
    assert _mounted_under(root) == [], "something is still mounted in the Debian root"
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh minbase Debian root with python3."""
    root = debootstrap(tmp_path_factory, ("python3",))
    yield root
    remove_root(root)


def _chroot(root: Path, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    spec = [f"--userspec={user}", "--groups="] if user else []
    return subprocess.run(
        [tool("chroot"), *spec, str(root), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=CLEAN_ENV,
        stdin=subprocess.DEVNULL,
    )


def _dpkg(root: Path, *args: str) -> str:
    done = _chroot(root, "dpkg", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _install(root: Path, deb: Path) -> None:
    shutil.copy(deb, root / "root" / deb.name)  # the chroot's /root: only root writes there
    _dpkg(root, "-i", f"/root/{deb.name}")


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in the Debian root")


def _enrollment_api(procs: Procs, db: InfluxTarget, broker: BrokerInfo) -> str:
    """A ``telemetry-api`` that signs the gateways' CSRs with the test broker's CA (its URL)."""
    pki = {"TELEMETRY_API_PKI_DIR": str(broker.pki.dir)}
    return start_api(procs, db, secrets.token_urlsafe(24), extra_env=pki)


def _credentials(root: Path, gateway: str, broker: BrokerInfo, api: str) -> None:
    """Enrol the installed agent as an operator and a gateway owner would: a one-time token from
    ``telemetry-stack pki token`` on the CA's host, then the installed ``edge-agent enroll`` run
    in the root as ``charger-telemetry``: the key is made there (0600) and never leaves it, and
    the certificate and the CA land where edge.env points (/var/lib/charger-telemetry)."""
    done = subprocess.run(
        [str(BIN / "telemetry-stack"), "pki", "token", gateway, "--dir", str(broker.pki.dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = done.stdout.split()[-1]
    uid, gid = _ids(root, "charger-telemetry")
    enrolled = _chroot(
        root, "edge-agent", "enroll", "--url", api, "--token", token, user=f"{uid}:{gid}"
    )
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    key = root / STATE / "gateway.key"
    assert key.stat().st_uid == uid
    assert key.stat().st_mode & 0o777 == 0o600
    assert (root / STATE / "gateway.crt").is_file()
    assert (root / STATE / "ca.crt").is_file()
    assert not (broker.pki.dir / f"{gateway}.key").exists()  # made in the root, not on the CA


def _configure(root: Path, broker: BrokerInfo, gateway: str) -> None:
    """Edit the installed edge.env as an operator would: the gateway id, the broker."""
    settings = {
        "TELEMETRY_EDGE_GATEWAY_ID": gateway,
        "TELEMETRY_EDGE_MQTT__HOST": broker.host,
        "TELEMETRY_EDGE_MQTT__PORT": str(broker.tls_port),
        "TELEMETRY_EDGE_TOPIC_ROOT": broker.topic_root,
        "TELEMETRY_EDGE_SIM__CHARGERS": "1",
        "TELEMETRY_EDGE_SIM__INTERVAL_S": "0.2",
        "TELEMETRY_EDGE_LOG_FORMAT": "json",
    }
    path = root / ENV_FILE
    lines = [
        line
        for line in path.read_text().splitlines()
        if line.lstrip("#").split("=")[0] not in settings
    ]
    path.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in settings.items())]) + "\n")


def _stored(db: InfluxTarget, gateway: str) -> int:
    rows = influxql(
        db.url, db.database, f"SELECT count(seq) FROM readings WHERE gateway_id = '{gateway}'"
    )
    return int(rows[0][1]) if rows else 0


def _run_agent(procs: Procs, root: Path, name: str) -> ManagedProcess:
    """The installed /usr/bin/edge-agent in the chroot as charger-telemetry, with no settings in
    its environment: everything comes from /etc/charger-telemetry/edge.env."""
    uid, gid = _ids(root, "charger-telemetry")
    argv = [tool("chroot"), f"--userspec={uid}:{gid}", "--groups=", str(root)]
    argv += ["/usr/bin/edge-agent", "run", "--source", "sim"]
    agent = ManagedProcess(name, argv, log_file=procs.logs / f"{name}.log", env=CLEAN_ENV)
    agent.start()
    procs.started.append(agent)
    return agent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_install_run_upgrade_remove_purge(
    debian_root: Path,
    deb: Path,
    broker: BrokerInfo,
    influx_db: InfluxTarget,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """The package's whole life on a clean Debian: install, publish from the chroot, upgrade
    (outbox, key and edge.env kept, publishing resumes), remove (state kept), purge (gone)."""
    root = debian_root
    _install(root, deb)
    user = (root / "etc/passwd").read_text()
    assert "charger-telemetry:" in user
    assert ":/var/lib/charger-telemetry:/usr/sbin/nologin" in user
    state = root / STATE
    uid, gid = _ids(root, "charger-telemetry")
    assert state.stat().st_uid == uid
    assert state.stat().st_mode & 0o777 == 0o700
    assert (root / "lib/systemd/system/charger-telemetry-edge.service").is_file()
    wants = root / "etc/systemd/system/multi-user.target.wants/charger-telemetry-edge.service"
    assert wants.is_symlink()  # enabled; starts once enrolled (ConditionPathExists)
    assert os.access(root / "usr/bin/edge-agent", os.X_OK)
    assert (root / "usr/lib/charger-telemetry-edge/edge_agent/__pycache__").is_dir()  # postinst

    gateway = f"gw-deb-{uuid.uuid4().hex[:6]}"
    _configure(root, broker, gateway)
    _credentials(root, gateway, broker, _enrollment_api(procs, influx_db, broker))
    start_bridge(procs, broker, influx_db)

    agent = _run_agent(procs, root, "edge-chroot")
    wait_until(
        "the chroot's agent's readings in InfluxDB",
        lambda: _stored(influx_db, gateway) >= 5 or not agent.is_running(),
        timeout=60,
    )
    assert agent.is_running(), agent.log_tail()
    agent.stop()
    first = _stored(influx_db, gateway)
    assert first >= 5
    outbox = state / "outbox.sqlite3"
    assert outbox.stat().st_uid == uid
    # The operator's check, by hand: the outbox path comes from edge.env.
    stats = _chroot(root, "edge-agent", "outbox", "stats", "--json", user=f"{uid}:{gid}")
    assert stats.returncode == 0, stats.stderr
    assert orjson.loads(stats.stdout)["last_seq_assigned"] >= first
    kept = {p: _sha256(p) for p in (outbox, state / "gateway.key", root / ENV_FILE)}

    newer = build_deb(tmp_path / "upgrade", version="0.1.0+upgrade1")
    _install(root, newer)
    version = _dpkg(root, "-s", "charger-telemetry-edge")
    assert "Version: 0.1.0+upgrade1" in version
    assert {p: _sha256(p) for p in kept} == kept  # outbox, key and the edited edge.env

    agent = _run_agent(procs, root, "edge-chroot-upgraded")
    wait_until(
        "the upgraded agent to publish",
        lambda: _stored(influx_db, gateway) >= first + 5 or not agent.is_running(),
        timeout=60,
    )
    assert agent.is_running(), agent.log_tail()
    agent.stop()

    _dpkg(root, "-r", "charger-telemetry-edge")
    assert outbox.is_file()
    assert (state / "gateway.key").is_file()
    assert not (root / "usr/bin/edge-agent").exists()
    assert not (root / "usr/lib/charger-telemetry-edge").exists()  # no bytecode left behind

    _dpkg(root, "-P", "charger-telemetry-edge")
    assert not state.exists()
    assert not (root / "etc/charger-telemetry").exists()
    assert not wants.exists()
