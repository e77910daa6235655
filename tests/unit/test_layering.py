"""The rooms of the cloud side, as docs/design.md draws them: a reading goes bridge ->
processor -> outputs and never comes back, and the shared package depends on no service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> dict[str, set[str]]:
    """For each module of ``package``, the top-level packages (and for ``processor``, the
    sub-packages) it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "processor",
            (
                "bridge",
                "query_api",
                "edge_agent",
                "telemetry_stack",
                "provisioning",
                "rollups",
                "sessions",
            ),
        ),
        (
            "telemetry_common",
            (
                "bridge",
                "processor",
                "query_api",
                "edge_agent",
                "telemetry_stack",
                "provisioning",
                "rollups",
                "sessions",
            ),
        ),
        (
            "provisioning",
            (
                "bridge",
                "processor",
                "query_api",
                "edge_agent",
                "telemetry_stack",
                "rollups",
                "sessions",
            ),
        ),
        (
            "bridge",
            ("query_api", "edge_agent", "telemetry_stack", "provisioning", "rollups", "sessions"),
        ),
        # The API may sign gateways' CSRs (query_api.enrollment) with provisioning's CA code.
        (
            "query_api",
            ("bridge", "processor", "edge_agent", "telemetry_stack", "rollups"),
        ),
        # The rollup job reads and writes InfluxDB through telemetry_common only.
        (
            "rollups",
            (
                "bridge",
                "processor",
                "query_api",
                "edge_agent",
                "telemetry_stack",
                "provisioning",
                "sessions",
            ),
        ),
        # So does the sessions job.
        (
            "sessions",
            (
                "bridge",
                "processor",
                "query_api",
                "edge_agent",
                "telemetry_stack",
                "provisioning",
                "rollups",
            ),
        ),
    ],
)
def test_a_package_imports_only_what_lies_downstream(
    package: str, forbidden: tuple[str, ...]
) -> None:
    """processor never climbs back into bridge, telemetry_common depends on no service, the
    API reads storage without importing the write side, and the rollup job needs only
    telemetry_common."""
    offenders = {
        module: sorted(n for n in names if n.split(".")[0] in forbidden)
        for module, names in imported_packages(package).items()
    }
    assert {m: o for m, o in offenders.items() if o} == {}


def test_the_processor_steps_do_not_reach_into_the_bridge_or_each_others_outputs() -> None:
    """Outputs and state are leaves: they import neither the steps (prepare, core) nor each
    other's rooms (an output does not update state; the commit step does)."""
    for module, names in imported_packages("processor").items():
        if "/outputs/" in module:
            assert not {"processor.core", "processor.prepare"} & names, module
            assert not any(n.startswith("processor.state") for n in names), module
        if "/state/" in module:
            assert not {"processor.core", "processor.prepare"} & names, module
            assert not any(n.startswith("processor.outputs") for n in names), module
