"""Reading the container stack's files as docker compose and its scripts would: compose's
variable interpolation, a service's environment, published ports and dependencies, .env files,
and docker/preflight.sh and docker/gen-env.sh run the way the containers run them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = ROOT / "docker-compose.yml"
PREFLIGHT: Final = ROOT / "docker" / "preflight.sh"
GEN_ENV: Final = ROOT / "docker" / "gen-env.sh"

VARIABLE = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<sep>:?-)?(?P<default>[^}]*)\}"
)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation: ``${VAR:-default}`` -> ``env[VAR]`` if set and non-empty, else
    the default (with no ``env``: every variable unset, as without a .env file)."""
    given = env or {}
    return VARIABLE.sub(lambda m: given.get(m["name"]) or m["default"], value).replace("$$", "$")


def environment(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """A compose service's ``environment``, interpolated with ``env``."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host_ip, published, target)`` for each published port ("" = every interface)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = interpolate(str(port)).split("/")[0].split(":")
        if len(parts) == 1:
            raise AssertionError(f"{port!r} publishes a random host port; name it")
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def depends(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``depends_on`` as ``{service: condition}``."""
    return {dep: cond["condition"] for dep, cond in service.get("depends_on", {}).items()}


def env_file(text: str) -> dict[str, str]:
    """The ``NAME=value`` lines of a .env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            out[name] = value
    return out


def _sh() -> str:
    sh = shutil.which("sh")
    assert sh is not None, "no POSIX shell on PATH"
    return sh


def run_preflight(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """docker/preflight.sh run with exactly ``env`` (plus PATH), as the container runs it."""
    return subprocess.run(
        [_sh(), str(PREFLIGHT)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def gen_env() -> dict[str, str]:
    """The variables of a .env written by docker/gen-env.sh."""
    out = subprocess.run(
        [_sh(), str(GEN_ENV)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return env_file(out)
