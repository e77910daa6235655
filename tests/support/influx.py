"""Reading InfluxDB 1.x from a test over its v1 HTTP API."""

from __future__ import annotations

from typing import Any

import httpx


def influxql(url: str, database: str, statement: str) -> list[list[Any]]:
    """The rows of the first series an InfluxQL statement returns (no rows: [])."""
    r = httpx.get(f"{url}/query", params={"db": database, "q": statement}, timeout=10)
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    series = result.get("series") or []
    return list(series[0]["values"]) if series else []
