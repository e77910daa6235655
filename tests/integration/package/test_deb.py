"""The edge agent's Debian package as built (``dpkg-deb -c``/``-I``, extracted): its files and
modes, its control fields and maintainer scripts, its configuration file, that the agent imports
nothing from outside it, and that its systemd unit passes ``systemd-analyze verify``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.settings import EdgeSettings
from telemetry_common.settings import settings_of
from tests.integration.package.conftest import LIB, build_deb, tool

pytestmark = pytest.mark.integration

UNIT = "lib/systemd/system/charger-telemetry-edge.service"
STATE = "/var/lib/charger-telemetry"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _run(name: str, *args: str) -> str:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, check=True).stdout


def _contents(deb: Path) -> dict[str, tuple[str, str]]:
    """``dpkg-deb -c``: path -> (mode string, owner/group)."""
    out: dict[str, tuple[str, str]] = {}
    for line in _run("dpkg-deb", "-c", str(deb)).splitlines():
        fields = line.split()
        path = fields[5].removeprefix(".")
        out[path.rstrip("/") or "/"] = (fields[0], fields[1])
    return out


def _control(deb: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in _run("dpkg-deb", "-f", str(deb)).splitlines():
        if not line.startswith(" ") and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def _env_lines(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, commented-out examples (``#KEY=VALUE``) included."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"#?(TELEMETRY_[A-Z0-9_]+)=(.*)", line.strip())
        if match:
            out[match[1]] = match[2]
    return out


def test_control_fields(deb: Path) -> None:
    """Name, version, this machine's architecture, and a Depends on the python3 minor version
    the compiled wheels were built for."""
    host_arch = _run("dpkg", "--print-architecture").strip()
    control = _control(deb)
    assert control["Package"] == "charger-telemetry-edge"
    assert deb.name == f"charger-telemetry-edge_{control['Version']}_{host_arch}.deb"
    assert control["Architecture"] == host_arch
    assert re.fullmatch(
        r"python3 \(>= 3\.11\), python3 \(<< 3\.12\), libc6 \(>= 2\.\d+\), passwd",
        control["Depends"],
    ), control["Depends"]
    assert int(control["Installed-Size"]) > 1000


def test_maintainer_scripts_and_conffiles(deb: Path, deb_tree: Path) -> None:
    """postinst, prerm and postrm are there, executable and valid sh; edge.env is a conffile."""
    info = _run("dpkg-deb", "-I", str(deb))
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\*\s+{script}\s+#!/bin/sh", info), info
        path = deb_tree / "DEBIAN" / script
        assert os.access(path, os.X_OK)
        _run("sh", "-n", str(path))
    conffiles = (deb_tree / "DEBIAN" / "conffiles").read_text().split()
    assert conffiles == ["/etc/charger-telemetry/edge.env"]


def test_files_modes_and_nothing_else(deb: Path) -> None:
    """The launcher is executable, the unit and edge.env are 0644, everything root-owned; no
    bytecode, no test suites, none of the repository's other services."""
    files = _contents(deb)
    assert files["/usr/bin/edge-agent"][0] == "-rwxr-xr-x"
    assert files[f"/{UNIT}"][0] == "-rw-r--r--"
    assert files["/etc/charger-telemetry/edge.env"][0] == "-rw-r--r--"
    assert files["/usr/share/doc/charger-telemetry-edge/copyright"][0] == "-rw-r--r--"
    assert files["/usr/share/doc/charger-telemetry-edge/changelog.gz"][0] == "-rw-r--r--"
    assert {owner for _, owner in files.values()} == {"root/root"}
    assert not [p for p in files if p.endswith((".pyc", ".pyo")) or "__pycache__" in p]
    assert not [p for p in files if re.search(r"/tests?(/|$)", p)]
    top = {p.split("/")[4] for p in files if p.startswith(f"/{LIB}/") and p.count("/") >= 4}
    assert {"edge_agent", "telemetry_common"} <= top
    others = {"bridge", "processor", "query_api", "provisioning", "telemetry_stack", "rollups"}
    assert not top & (others | {"sessions", "tests"})
    executables = [p for p, (mode, _) in files.items() if mode[0] == "-" and "x" in mode]
    assert executables == ["/usr/bin/edge-agent"]


def test_the_agent_imports_only_what_the_package_ships(deb: Path, deb_tree: Path) -> None:
    """In a clean interpreter (the system python3, -I) with only the package's directory added,
    every edge_agent module imports; no module comes from outside it or the standard library;
    every shipped telemetry_common module is used; the agent reports the package's version."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing: the clean-interpreter check needs it")
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if version != "3.11":
        pytest.skip(f"{SYSTEM_PYTHON} is {version}; the package's wheels are for 3.11")
    lib = deb_tree / LIB
    probe = f"""
import importlib, importlib.metadata, json, pkgutil, sys, sysconfig
at_start = set(sys.modules)  # site's own (a .pth file's _distutils_hack)
sys.path.insert(0, {str(lib)!r})
import edge_agent
for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
    importlib.import_module(m.name)
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
outside = sorted(
    n for n, m in sys.modules.items()
    if n not in at_start and getattr(m, "__file__", None)
    and not m.__file__.startswith({str(lib)!r})
    and not m.__file__.startswith(stdlib)
)
print(json.dumps({{
    "outside": outside,
    "common": sorted(n for n in sys.modules if n.startswith("telemetry_common.")),
    "version": importlib.metadata.version("charger-telemetry"),
}}))
"""
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=deb_tree,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    assert seen["outside"] == []
    shipped = sorted(
        f"telemetry_common.{p.stem}"
        for p in (lib / "telemetry_common").glob("*.py")
        if p.stem != "__init__"
    )
    assert shipped == seen["common"]
    assert seen["version"] == _control(deb)["Version"]


def test_edge_env_names_real_settings_and_the_state_directory(deb_tree: Path) -> None:
    """Every variable in the shipped edge.env (examples included) is one EdgeSettings reads;
    its files live under the state directory, and the unit waits for its certificate."""
    lines = _env_lines(deb_tree / "etc/charger-telemetry/edge.env")
    known = {s.env for s in settings_of(EdgeSettings)}
    assert set(lines) <= known, set(lines) - known
    assert "TELEMETRY_EDGE_GATEWAY_ID" in lines
    paths = {k: v for k, v in lines.items() if k.endswith(("_FILE", "_PATH"))}
    assert len(paths) == 4
    assert all(v.startswith(f"{STATE}/") for v in paths.values()), paths
    unit = (deb_tree / UNIT).read_text()
    cert = lines["TELEMETRY_EDGE_MQTT__CERT_FILE"]
    assert f"ConditionPathExists={cert}\n" in unit


def _unit_copy(deb_tree: Path, tmp_path: Path, exec_path: Path) -> Path:
    """The packaged unit with ExecStart= naming ``exec_path`` (verify checks that it exists and
    is executable; the package's own /usr/bin/edge-agent is not installed on this machine)."""
    unit = (deb_tree / UNIT).read_text()
    assert "ExecStart=/usr/bin/edge-agent " in unit
    copy = tmp_path / "charger-telemetry-edge.service"
    copy.write_text(unit.replace("ExecStart=/usr/bin/edge-agent ", f"ExecStart={exec_path} "))
    return copy


def _analyze() -> str:
    return tool("systemd-analyze")  # the systemd package


def test_unit_passes_systemd_analyze_verify(deb_tree: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit with the package's launcher as ExecStart, and
    refuses it with a launcher that does not exist (so the check is not a no-op)."""
    analyze = _analyze()
    good = _unit_copy(deb_tree, tmp_path, deb_tree / "usr/bin/edge-agent")
    result = subprocess.run([analyze, "verify", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (tmp_path / "bad").mkdir()
    bad = _unit_copy(deb_tree, tmp_path / "bad", tmp_path / "missing-edge-agent")
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "missing-edge-agent" in result.stderr


def test_unit_exposure_is_low(deb_tree: Path, tmp_path: Path) -> None:
    """``systemd-analyze security --offline=yes``: the unit's exposure level stays "OK" (<= 2.0;
    1.2 when written; docs/edge-agent.md quotes it)."""
    analyze = _analyze()
    unit = _unit_copy(deb_tree, tmp_path, deb_tree / "usr/bin/edge-agent")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline gave no score: {result.stderr[-500:]}")
    print(f"systemd-analyze security: {match[1]}", file=sys.stderr)
    assert float(match[1]) <= 2.0, result.stdout


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def test_arm64_is_built_from_any_machine(tmp_path: Path) -> None:
    """``make deb ARCH=arm64`` on amd64: an arm64 package whose every shared object is AArch64
    (EM_AARCH64 = 183), none for the build machine."""
    arm = build_deb(tmp_path, arch="arm64")
    assert arm.name.endswith("_arm64.deb")
    assert _control(arm)["Architecture"] == "arm64"
    tree = tmp_path / "tree"
    _run("dpkg-deb", "-x", str(arm), str(tree))
    objects = list((tree / LIB).rglob("*.so"))
    assert len(objects) >= 4  # pydantic-core, orjson, rpds, cryptography, websockets, cffi
    assert {_elf_machine(p) for p in objects} == {183}


def test_lintian_is_clean(deb: Path) -> None:
    """Debian's package checker finds no error or warning (beyond the overrides the package
    ships with their reasons: packaging/debian/lintian-overrides)."""
    lintian = tool("lintian")
    result = subprocess.run(
        [lintian, "--fail-on", "error,warning", str(deb)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    findings = [line for line in result.stdout.splitlines() if line[:2] in {"E:", "W:"}]
    assert findings == []
    assert result.returncode == 0, result.stdout + result.stderr
