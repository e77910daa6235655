"""HTTP load generators: ``wrk`` running a generated Lua script, or a Python generator (aiohttp
on uvloop) in its own process (``python -m bench.harness.http_load CONFIG``). Both request
random ids among ``n`` (``/v1/chargers/{prefix}{i:0width}/{suffix}``) with ``clients``
keep-alive connections for ``duration`` seconds, and give the same figures."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from bench.harness.report import percentile
from bench.harness.stack import Stack, wait_exit

WRK_INSTALL: Final = "apt-get install wrk"


@dataclass(frozen=True)
class Target:
    """What the clients request: ``url`` + ``/v1/chargers/{prefix}{i:0width}/{suffix}`` for a
    random i in 0..n-1, with the read key."""

    url: str
    prefix: str
    n: int
    width: int
    suffix: str
    key: str


def warm_up(target: Target) -> dict[str, float]:
    """Each charger's page once, one after the other (its first build, cached by the API
    afterwards): the load then measures the steady state; the cold builds are reported on
    their own."""
    ms = []
    with httpx.Client(base_url=target.url, headers={"X-API-Key": target.key}, timeout=60) as http:
        for i in range(target.n):
            t0 = time.perf_counter()
            path = f"/v1/chargers/{target.prefix}{i:0{target.width}d}/{target.suffix}"
            http.get(path).raise_for_status()
            ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return {"requests": len(ms), "p50_ms": ms[len(ms) // 2], "max_ms": ms[-1]}


@dataclass(frozen=True)
class Load:
    clients: int
    duration: float
    request_timeout: float
    wrk_threads: int = 1


_WRK_SCRIPT: Final = """\
-- written by bench/harness/http_load.py: random charger ids, percentiles as JSON in done()
local n, width, prefix, suffix, out = %(n)d, %(width)d, "%(prefix)s", "%(suffix)s", "%(out)s"
wrk.headers["X-API-Key"] = "%(key)s"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
end
function request()
  local path = string.format("/v1/chargers/%%s%%0" .. width .. "d/%%s", prefix,
                             math.random(0, n - 1), suffix)
  return wrk.format("GET", path)
end
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open(out, "w")
  f:write(string.format(
    '{"requests":%%d,"duration_us":%%d,"bytes":%%d,"errors":{"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d},"latency_us":{"p50":%%d,"p90":%%d,"p99":%%d,' ..
    '"p999":%%d,"max":%%d,"mean":%%f}}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
  f:close()
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _time_limit(load: Load) -> float:
    """How long a generator may run: its duration plus a grace period."""
    return load.duration + load.request_timeout + 30


def run_wrk(stack: Stack, name: str, target: Target, load: Load) -> dict[str, Any]:
    """``wrk`` with ``load.clients`` connections on random ids of ``target``."""
    out = stack.work / f"{name}.json"
    script = stack.work / f"{name}.lua"
    fields = asdict(target) | {"out": str(out)}
    script.write_text(_WRK_SCRIPT % fields, encoding="utf-8")
    binary = wrk_binary()
    assert binary is not None
    argv = [
        binary,
        f"-t{min(load.wrk_threads, load.clients)}",
        f"-c{load.clients}",
        f"-d{max(1, round(load.duration))}s",
        f"--timeout={load.request_timeout:g}s",
        "-s",
        str(script),
        target.url,
    ]
    wait_exit(stack.start(name, argv), _time_limit(load))
    raw = json.loads(out.read_text())
    lat = raw["latency_us"]
    errors = sum(raw["errors"].values())
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "req_per_s": raw["requests"] / seconds,
        "errors": errors,
        "error_detail": raw["errors"],
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000,
    }


def run_python(stack: Stack, name: str, target: Target, load: Load) -> dict[str, Any]:
    """The Python generator in its own process, same figures as :func:`run_wrk`."""
    out = stack.work / f"{name}.json"
    config = asdict(target) | {
        "clients": load.clients,
        "duration": load.duration,
        "timeout": load.request_timeout,
        "out": str(out),
    }
    cfg = stack.work / f"{name}.config.json"
    cfg.write_text(json.dumps(config), encoding="utf-8")
    argv = [sys.executable, "-m", "bench.harness.http_load", str(cfg)]
    wait_exit(stack.start(name, argv), _time_limit(load))
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def _loadgen(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    n, width, prefix, suffix = cfg["n"], cfg["width"], cfg["prefix"], cfg["suffix"]
    paths = [f"/v1/chargers/{prefix}{i:0{width}d}/{suffix}" for i in range(n)]
    connector = aiohttp.TCPConnector(limit=cfg["clients"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=cfg["timeout"])
    headers = {"X-API-Key": cfg["key"]}
    rng = random.Random()  # noqa: S311 (picks charger ids, not secrets)
    async with aiohttp.ClientSession(
        base_url=cfg["url"], connector=connector, timeout=timeout, headers=headers
    ) as session:

        async def client(end: float) -> None:
            while time.perf_counter() < end:
                path = paths[rng.randrange(n)]
                t0 = time.perf_counter()
                try:
                    async with session.get(path) as r:
                        await r.read()
                        code = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    code = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[code] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(client(t_start + cfg["duration"]) for _ in range(cfg["clients"])))
        seconds = time.perf_counter() - t_start
    ms = sorted(x * 1000 for x in latencies)
    ok = statuses.get("200", 0)
    return {
        "requests": len(ms),
        "seconds": seconds,
        "req_per_s": len(ms) / seconds,
        "errors": len(ms) - ok,
        "error_detail": {k: v for k, v in statuses.items() if k != "200"},
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def loadgen_main(config: Path) -> None:
    """The Python generator's process: reads its config, writes its figures to ``out``."""
    cfg = json.loads(config.read_text())
    try:
        import uvloop

        result = uvloop.run(_loadgen(cfg))
        result["event_loop"] = "uvloop"
    except ImportError:
        result = asyncio.run(_loadgen(cfg))
        result["event_loop"] = "asyncio"
    Path(cfg["out"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    loadgen_main(Path(sys.argv[1]))
