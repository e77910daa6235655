"""The edge agent's Debian package, built once per session by ``scripts/build_deb.py`` (the
script behind ``make deb``) for this machine's architecture. Wheels are cached under
``.stack/cache/deb-wheels`` so only the first run downloads them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".stack" / "cache"
LIB = "usr/lib/charger-telemetry-edge"


def tool(name: str) -> str:
    """The absolute path of ``name``; the test is skipped, with the reason, without it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here")
    return path


def build_deb(out: Path, version: str | None = None, arch: str | None = None) -> Path:
    """Run the build script; the path of the .deb it made."""
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "build_deb.py"),
        "--out",
        str(out),
        "--wheel-cache",
        str(CACHE / "deb-wheels"),
    ]
    if version is not None:
        argv += ["--version", version]
    if arch is not None:
        argv += ["--arch", arch]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.is_file(), result.stdout
    return deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tool("dpkg-deb")  # Debian/Ubuntu's dpkg: without it, no package
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def deb_tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, extracted (``dpkg-deb -x``), its control files under DEBIAN/."""
    tree = tmp_path_factory.mktemp("deb-tree")
    subprocess.run([tool("dpkg-deb"), "-x", str(deb), str(tree)], check=True)
    subprocess.run([tool("dpkg-deb"), "-e", str(deb), str(tree / "DEBIAN")], check=True)
    return tree
