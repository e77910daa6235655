"""Just enough of the InfluxDB 1.x HTTP API for the benchmarks: one keep-alive client each."""

from __future__ import annotations

from typing import Any

import httpx


class Influx:
    """One keep-alive HTTP client of one InfluxDB 1.x (``/query``, ``/write``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def query(self, q: str, db: str | None = None) -> list[list[Any]]:
        """The rows of the first series ``q`` returns ([] when none)."""
        params = {"q": q} if db is None else {"q": q, "db": db}
        r = self.http.post("/query", data=params)
        r.raise_for_status()
        body = r.json()
        result = body["results"][0]
        if "error" in result:
            raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        series = result.get("series")
        if not series:
            return []
        rows: list[list[Any]] = series[0]["values"]
        return rows

    def scalar(self, q: str, db: str) -> int:
        rows = self.query(q, db)
        return int(rows[0][1]) if rows else 0

    def write(self, db: str, body: bytes) -> None:
        r = self.http.post("/write", params={"db": db, "precision": "ns"}, content=body)
        if r.status_code != 204:
            raise RuntimeError(f"write refused ({r.status_code}): {r.text[:300]}")

    def queries_served(self) -> int:
        """InfluxDB's count of /query requests since it started (``SHOW STATS``, httpd module)."""
        r = self.http.get("/query", params={"q": "SHOW STATS FOR 'httpd'"})
        r.raise_for_status()
        total = 0
        for result in r.json()["results"]:
            for s in result.get("series", ()):
                cols = s["columns"]
                if "queryReq" in cols:
                    total += sum(int(row[cols.index("queryReq")]) for row in s["values"])
        return total
