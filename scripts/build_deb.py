"""Build the edge agent's Debian package: ``make deb [ARCH=arm64] [PYTHON_VERSION=3.11]``.

    python scripts/build_deb.py [--arch amd64|arm64] [--python-version 3.11] [--version V]
                                  [--out dist] [--wheel-cache DIR]

The package ``charger-telemetry-edge_<version>_<arch>.deb`` holds:

- ``/usr/lib/charger-telemetry-edge/``: ``edge_agent``, the ``telemetry_common`` modules it
  imports (found by following its imports, nothing else of the repository) and its runtime
  dependencies from PyPI as binary wheels for ``--arch`` and ``--python-version`` (so it can be
  built for arm64 on amd64); pydantic-core, orjson, rpds-py and websockets are compiled per
  Python version, hence ``Depends: python3 (>= X.Y), python3 (<< X.Y+1)``;
- ``/usr/bin/edge-agent`` (the system python3), the systemd unit, ``/etc/charger-telemetry/
  edge.env`` (a conffile) and the maintainer scripts from ``packaging/debian/``.

Wheels are downloaded once per (arch, Python version, requirements) into ``--wheel-cache``; the
build itself then needs no network. The package is assembled with ``dpkg-deb --build
--root-owner-group``.
"""

from __future__ import annotations

import argparse
import ast
import email.utils
import gzip
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = ROOT / "packaging" / "debian"
PACKAGE = "charger-telemetry-edge"
PACKAGE_UNIT = f"{PACKAGE}.service"
MAINTAINER = "charger-telemetry maintainers <maintainers@charger-telemetry.invalid>"
LIB = Path("usr/lib/charger-telemetry-edge")
#: The agent's own packages: what it imports of the repository is followed from these.
AGENT_PACKAGES = ("edge_agent",)
SHARED_PACKAGES = ("telemetry_common",)
#: The agent's runtime dependencies (their version ranges come from pyproject.toml).
AGENT_DEPENDENCIES = (
    "paho-mqtt",
    "pydantic",
    "pydantic-settings",
    "typer",
    "rich",
    "cryptography",
    "orjson",
    "prometheus-client",
    "ocpp",
    "websockets",
    # edge-agent enroll and certificate renewal (edge_agent/enroll.py)
    "httpx",
    "sniffio",
)
#: Debian architecture -> the wheel platform tags a Debian 12 / Ubuntu 22.04 or newer accepts.
PLATFORMS = {
    "amd64": "x86_64",
    "arm64": "aarch64",
}
GLIBC_MINOR = 36  # Debian 12 / Raspberry Pi OS 12 have glibc 2.36: wheels up to manylinux_2_36


class BuildError(Exception):
    pass


def agent_requirements() -> list[str]:
    """The agent's dependencies with pyproject.toml's version ranges (defined once there)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    by_name: dict[str, str] = {}
    for requirement in project["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        by_name[name.lower()] = requirement
    missing = [name for name in AGENT_DEPENDENCIES if name not in by_name]
    if missing:
        raise BuildError(f"not in pyproject.toml's dependencies: {', '.join(missing)}")
    return [by_name[name] for name in AGENT_DEPENDENCIES]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise BuildError(f"{path}: relative import; the closure follows absolute ones")
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def agent_sources() -> list[Path]:
    """Every file of the agent's packages, plus the shared modules they import (transitively),
    with the ``__init__.py`` of each package on the way; paths relative to the repository."""
    files = {p for pkg in AGENT_PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    files |= {p for pkg in AGENT_PACKAGES for p in (ROOT / pkg).rglob("py.typed")}
    todo = [p for p in files if p.suffix == ".py"]
    while todo:
        for name in _imports(todo.pop()):
            if name.split(".")[0] not in SHARED_PACKAGES:
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:depth]))
                if found is not None and found not in files:
                    files.add(found)
                    todo.append(found)
    return sorted(p.relative_to(ROOT) for p in files if "__pycache__" not in p.parts)


def _platform_args(arch: str, python_version: str) -> list[str]:
    machine = PLATFORMS.get(arch)
    if machine is None:
        raise BuildError(f"--arch {arch}: supported are {', '.join(PLATFORMS)}")
    tags = [f"manylinux2014_{machine}"]
    tags += [f"manylinux_2_{minor}_{machine}" for minor in range(17, GLIBC_MINOR + 1)]
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in tags:
        args += ["--platform", tag]
    return args


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} is not installed (Debian/Ubuntu: apt-get install dpkg)")
    return path


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    result = subprocess.run(command, check=False)
    if result.returncode:
        raise BuildError(f"pip {args[0]} failed (exit {result.returncode}): {' '.join(command)}")


def fetch_wheels(cache: Path, requirements: list[str], platform: list[str]) -> None:
    """Download the wheels into ``cache`` unless it already holds this exact set."""
    key = hashlib.sha256("\n".join([*requirements, *platform]).encode()).hexdigest()
    stamp = cache / ".complete"
    if stamp.is_file() and stamp.read_text() == key:
        return
    cache.mkdir(parents=True, exist_ok=True)
    _pip("download", "--dest", str(cache), *platform, *requirements)
    stamp.write_text(key)


def install_dependencies(
    lib: Path, cache: Path, requirements: list[str], platform: list[str]
) -> None:
    _pip(
        "install",
        "--no-index",
        "--find-links",
        str(cache),
        "--no-compile",
        "--target",
        str(lib),
        *platform,
        *requirements,
    )
    shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts of the dependencies
    for tests in lib.glob("*/tests"):  # the dependencies' own test suites (jsonschema's)
        if tests.is_dir():
            shutil.rmtree(tests)


def _copy(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _normalise(tree: Path) -> None:
    """Directories 0755, files 0644 (the launcher and maintainer scripts are set afterwards);
    no bytecode."""
    for path in sorted(tree.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.suffix in {".pyc", ".pyo"}:
            path.unlink()
    for path in tree.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tree.chmod(0o755)


def _changelog(path: Path, version: str) -> None:
    """The Debian changelog every package carries; the project's history is CHANGELOG.md."""
    stamp = email.utils.format_datetime(datetime.now(UTC))
    text = (
        f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
        "  * Built from the charger-telemetry repository (make deb):\n"
        "    its CHANGELOG.md says what changed.\n\n"
        f" -- {MAINTAINER}  {stamp}\n"
    )
    path.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    path.chmod(0o644)


def _installed_size_kib(root: Path) -> int:
    return sum(-(-p.stat().st_size // 1024) for p in root.rglob("*") if p.is_file()) or 1


def _dist_info(lib: Path, version: str) -> None:
    """``importlib.metadata.version("charger-telemetry")`` is the agent version it reports."""
    python_version = version.split("-")[0].replace("~", "")
    info = lib / f"charger_telemetry-{python_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: charger-telemetry\nVersion: {python_version}\n"
    )
    (info / "INSTALLER").write_text("charger-telemetry-edge.deb\n")


def glibc_needed(lib: Path) -> tuple[int, int]:
    """The newest glibc a shipped wheel needs: for each wheel the oldest its manylinux tags
    accept (``manylinux2014`` is 2.17), the newest of those; (2, 17) when none is binary."""
    needed = (2, 17)
    for wheel in lib.glob("*.dist-info/WHEEL"):
        accepted: list[tuple[int, int]] = []
        for line in wheel.read_text().splitlines():
            platform = line.removeprefix("Tag: ").split("-")[-1] if line.startswith("Tag:") else ""
            if platform.startswith("manylinux2014_"):
                accepted.append((2, 17))
            elif platform.startswith("manylinux_"):
                major, minor = platform.split("_")[1:3]
                accepted.append((int(major), int(minor)))
        if accepted:
            needed = max(needed, min(accepted))
    return needed


def python_depends(python_version: str) -> str:
    major, minor = (int(part) for part in python_version.split("."))
    return f"python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})"


def build(*, arch: str, python_version: str, version: str, out: Path, wheel_cache: Path) -> Path:
    requirements = agent_requirements()
    platform = _platform_args(arch, python_version)
    cache = wheel_cache / f"{arch}-cp{python_version.replace('.', '')}"
    fetch_wheels(cache, requirements, platform)
    with tempfile.TemporaryDirectory(prefix="deb-") as tmp:
        root = Path(tmp) / "root"
        lib = root / LIB
        install_dependencies(lib, cache, requirements, platform)
        for source in agent_sources():
            _copy(ROOT / source, lib / source, 0o644)
        glibc = glibc_needed(lib)
        _dist_info(lib, version)
        _copy(DEBIAN / PACKAGE_UNIT, root / "lib/systemd/system" / PACKAGE_UNIT, 0o644)
        _copy(DEBIAN / "edge.env", root / "etc/charger-telemetry/edge.env", 0o644)
        doc = root / "usr/share/doc" / PACKAGE
        _copy(DEBIAN / "copyright", doc / "copyright", 0o644)
        _changelog(doc / "changelog.gz", version)
        overrides = root / "usr/share/lintian/overrides" / PACKAGE
        _copy(DEBIAN / "lintian-overrides", overrides, 0o644)
        _copy(ROOT / "docs/edge-agent.md", doc / "edge-agent.md", 0o644)
        _normalise(root)
        _copy(DEBIAN / "edge-agent", root / "usr/bin/edge-agent", 0o755)
        control = root / "DEBIAN"
        control.mkdir(mode=0o755)
        for script in ("postinst", "prerm", "postrm"):
            _copy(DEBIAN / script, control / script, 0o755)
        _copy(DEBIAN / "conffiles", control / "conffiles", 0o644)
        (control / "control").write_text(
            (DEBIAN / "control.in")
            .read_text()
            .format(
                version=version,
                arch=arch,
                maintainer=MAINTAINER,
                installed_size=_installed_size_kib(root),
                depends=f"{python_depends(python_version)}, libc6 (>= {glibc[0]}.{glibc[1]})",
            )
        )
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{PACKAGE}_{version}_{arch}.deb"
        subprocess.run(
            [_tool("dpkg-deb"), "--build", "--root-owner-group", "-Zxz", str(root), str(deb)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return deb


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    dpkg = shutil.which("dpkg")
    host_arch = (
        subprocess.run(
            [dpkg, "--print-architecture"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if dpkg
        else ""
    )
    parser.add_argument("--arch", default=host_arch or "amd64", choices=sorted(PLATFORMS))
    parser.add_argument("--python-version", default="3.11", help="the target's python3 (X.Y)")
    parser.add_argument("--version", default=project_version(), help="the package's version")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--wheel-cache", type=Path, default=ROOT / ".stack/cache/deb-wheels")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        deb = build(
            arch=args.arch,
            python_version=args.python_version,
            version=args.version,
            out=args.out,
            wheel_cache=args.wheel_cache,
        )
    except BuildError as exc:
        print(f"build_deb: {exc}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
