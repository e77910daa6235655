"""Writing line protocol to InfluxDB, through one interface with two back ends.

- ``V1Writer``: POST ``/write`` (InfluxDB 1.x, and the v1-compatible API of 2.x and 3.x).
- ``V2Writer``: ``/api/v2/write`` through influxdb-client's async client (2.x, 3.x).

Errors are translated at this boundary into two kinds the pipeline acts on:
``WriteRejectedError`` (the data is refused: 400/422 parse or type errors, 413 too large; split
and dead-letter, never retry as is) and ``WriteUnavailableError`` (5xx, timeouts, connection
errors, and 401/403/404 which are configuration faults rather than bad data: retry with backoff,
acknowledge nothing meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Protocol

import httpx

from telemetry_common.errors import TelemetryError
from telemetry_common.influxql import duration_literal, retention_policy_statement
from telemetry_common.settings import InfluxSettings

log = logging.getLogger(__name__)

DATA_REJECTED = frozenset({400, 413, 422})


class WriteError(TelemetryError):
    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"InfluxDB write failed ({status}): {detail}")
        self.status = status
        self.detail = detail


class WriteRejectedError(WriteError):
    """InfluxDB refused (some of) the data itself."""


class WriteUnavailableError(WriteError):
    """InfluxDB could not take the data now; the same write may succeed later."""


def field_str(text: str) -> str:
    """``text`` as a line-protocol string field value: quoted, its backslashes, double quotes
    and newlines escaped (the dead letters' and the alarms' points)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tag_str(value: str) -> str:
    """``value`` as a line-protocol tag value: its backslashes, commas, equals signs and spaces
    escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _classify(status: int, detail: str) -> WriteError:
    if status in DATA_REJECTED:
        return WriteRejectedError(status, detail)
    return WriteUnavailableError(status, detail)


class InfluxWriter(Protocol):
    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        """Write ``lines``; ``rp``: a retention policy of the database other than its default
        (v1 API), or on the v2 API the bucket ``{bucket}_{rp}``."""

    async def prepare(self) -> None: ...

    async def aclose(self) -> None: ...


class V1Writer:
    def __init__(self, settings: InfluxSettings) -> None:
        self._s = settings
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        auth = None
        if settings.username and settings.password is not None:
            auth = httpx.BasicAuth(settings.username, settings.password.get_secret_value())
        self._http = httpx.AsyncClient(
            base_url=settings.url, timeout=settings.timeout_s, headers=headers, auth=auth
        )

    async def prepare(self) -> None:
        """CREATE DATABASE (idempotent) when configured to; retried until InfluxDB answers."""
        if not self._s.create_database:
            return
        q = f'CREATE DATABASE "{self._s.database}"'
        delay = 0.5
        while True:
            try:
                r = await self._http.post("/query", data={"q": q})
                if r.status_code == 200 and '"error"' not in r.text:
                    return
                log.warning("CREATE DATABASE answered %s: %s", r.status_code, r.text[:200])
            except httpx.HTTPError as exc:
                log.warning("InfluxDB not reachable at %s (%s); waiting", self._s.url, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        params = {"db": self._s.database, "precision": "ns"}
        if rp is not None:
            params["rp"] = rp
        body = "\n".join(lines).encode()
        # The body goes through a generator: httpx leaves every request in a reference cycle,
        # and a cycle holding a ~2 MB body would keep it until a collection; the finished
        # generator holds nothing, so the body is freed as soon as this call returns.
        headers = {"Content-Length": str(len(body))}
        try:
            r = await self._http.post("/write", params=params, content=_once(body), headers=headers)
        except httpx.HTTPError as exc:
            raise WriteUnavailableError(None, f"{type(exc).__name__}: {exc}") from exc
        if r.status_code != 204:
            raise _classify(r.status_code, r.text[:500])

    async def aclose(self) -> None:
        await self._http.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class V2Writer:
    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        if settings.token is None or not settings.org:
            raise WriteUnavailableError(None, "the v2 API needs INFLUX__TOKEN and INFLUX__ORG")
        self._s = settings
        self._client = InfluxDBClientAsync(
            url=settings.url,
            token=settings.token.get_secret_value(),
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
        )
        self._api = self._client.write_api()

    async def prepare(self) -> None:
        """The bucket is provisioned by InfluxDB's own setup; wait until the server answers."""
        delay = 0.5
        while not await self._client.ping():
            log.warning("InfluxDB not reachable at %s; waiting", self._s.url)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def write(self, lines: Sequence[str], *, rp: str | None = None) -> None:
        from aiohttp import ClientError
        from influxdb_client.rest import ApiException

        bucket = self._s.bucket or self._s.database
        try:
            await self._api.write(
                bucket=bucket if rp is None else f"{bucket}_{rp}", record="\n".join(lines)
            )
        except ApiException as exc:
            raise _classify(int(exc.status or 0), str(exc.body)[:500]) from exc
        except (ClientError, TimeoutError) as exc:
            raise WriteUnavailableError(None, f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]


async def create_retention_policy(
    settings: InfluxSettings, rp: str, duration: timedelta | None = None, *, attempts: int = 5
) -> bool:
    """Create the retention policy ``rp`` (not the default; ``duration`` None: INF) on the v1
    API if it is missing; True once InfluxDB answered success. Idempotent: whoever writes to
    ``rp`` first runs it. On the v2 API there are no retention policies: the bucket
    ``{bucket}_{rp}`` and its DBRP mapping are provisioned with InfluxDB (docs/deploy.md), and
    this returns False. A refusal (say, a user without the right) is logged, not raised."""
    if settings.api != "v1":
        return False
    q = retention_policy_statement(
        "CREATE", settings.database, rp, "INF" if duration is None else duration_literal(duration)
    )
    auth = None
    if settings.username and settings.password is not None:
        auth = httpx.BasicAuth(settings.username, settings.password.get_secret_value())
    headers = {}
    if settings.token is not None:
        headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
    delay = 0.5
    async with httpx.AsyncClient(
        base_url=settings.url, timeout=settings.timeout_s, headers=headers, auth=auth
    ) as http:
        for attempt in range(attempts):
            try:
                r = await http.post("/query", data={"q": q})
            except httpx.HTTPError as exc:
                log.warning("retention policy %s: InfluxDB not reachable (%s)", rp, exc)
            else:
                if r.status_code == 200 and '"error"' not in r.text:
                    return True
                log.warning("%s answered %s: %s", q, r.status_code, r.text[:200])
                if r.status_code < 500:
                    return False
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
    return False


def make_writer(settings: InfluxSettings) -> InfluxWriter:
    """The configured back end, not yet prepared (``Writer`` prepares and closes it)."""
    return V1Writer(settings) if settings.api == "v1" else V2Writer(settings)


class Writer:
    """``async with Writer(settings) as w``: the configured back end, prepared and closed."""

    def __init__(self, settings: InfluxSettings) -> None:
        self._settings = settings
        self._impl: InfluxWriter | None = None

    async def __aenter__(self) -> InfluxWriter:
        impl = self._impl = make_writer(self._settings)
        await impl.prepare()
        return impl

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._impl is not None:
            await self._impl.aclose()
