"""An async InfluxQL client over the v1 ``/query`` endpoint (InfluxDB 1.x, and 2.x/3.x v1-compat).

    InfluxError(TelemetryError)   carries the status (None when no answer) and InfluxDB's message
    ├── InfluxUnavailable         no answer, a timeout, 5xx, or 401/403 (a deployment fault)
    └── InfluxQueryError          InfluxDB answered and refused the query (4xx, or an error body)

httpx errors are translated at this boundary with ``raise ... from exc``. The client is an async
context manager with explicit states: unopened -> opened -> closed (not reopenable).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import httpx
import orjson

from telemetry_common.errors import TelemetryError
from telemetry_common.settings import InfluxSettings

Epoch = Literal["ns", "u", "ms", "s"]
#: Points per document of a chunked answer (InfluxDB also starts a new document per series).
CHUNK_POINTS: Final = 1000
#: Answers larger than this are parsed in a worker thread (see InfluxQLClient.query).
OFFLOAD_PARSE_BYTES: Final = 256 * 1024


class InfluxError(TelemetryError):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message if status is None else f"HTTP {status}: {message}")
        self.message = message
        self.status = status


class InfluxUnavailable(InfluxError):
    """InfluxDB did not answer usefully: unreachable, timed out, 5xx, or refused our credentials."""


class InfluxQueryError(InfluxError):
    """InfluxDB answered and refused the query."""


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a result: its columns and rows (times as integers in the chosen epoch)."""

    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]


class InfluxQL(Protocol):
    """What the routes need from InfluxDB; tests inject a fake that records the queries."""

    async def query(self, q: str) -> list[Series]: ...

    async def query_chunked(self, q: str) -> list[Series]: ...

    def query_stream(self, q: str, *, chunk_size: int = ...) -> AsyncIterator[list[Series]]: ...


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class InfluxQLClient:
    """Runs one read-only InfluxQL statement at a time against ``{url}/query?db=...``.

    Auth: ``Authorization: Token <token>`` when a token is set (2.x/3.x), else HTTP basic auth
    when a username is set (1.x), else none.
    """

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        epoch: Epoch = "ns",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._epoch: Epoch = epoch
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._state = _State.UNOPENED

    @property
    def state(self) -> str:
        return self._state.value

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"cannot open an InfluxQL client that is {self._state.value}")
        s = self._settings
        headers = {"Accept": "application/json"}
        auth: httpx.BasicAuth | None = None
        if s.token is not None:
            headers["Authorization"] = f"Token {s.token.get_secret_value()}"
        elif s.username is not None:
            password = s.password.get_secret_value() if s.password is not None else ""
            auth = httpx.BasicAuth(s.username, password)
        self._http = httpx.AsyncClient(
            base_url=s.url,
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(s.timeout_s),
            transport=self._transport,
            follow_redirects=False,
        )
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._state = _State.CLOSED

    async def query(self, q: str) -> list[Series]:
        """Run ``q`` (one statement) and return its series; raise :class:`InfluxError`."""
        http = self._opened()
        with self._translated():
            response = await http.get("/query", params=self._params(q))
        if len(response.content) > OFFLOAD_PARSE_BYTES:
            # A big answer (say, a page of 10,000 raw points) takes tens of milliseconds to
            # parse: in a worker thread, the event loop keeps serving meanwhile (it gets the
            # GIL back every switch interval, 5 ms).
            return await asyncio.to_thread(_parse, response)
        return _parse(response)

    async def execute(self, q: str) -> list[Series]:
        """Run ``q`` by POST, in a form body: InfluxDB 1.x refuses statements that change the
        database (``CREATE``/``ALTER RETENTION POLICY``, ...) over GET; and a long ``SELECT``
        (the rollup job's, ~1,000 characters) costs httpx a few times less CPU to send as a
        form than as a URL. Raises as :meth:`query`."""
        http = self._opened()
        with self._translated():
            response = await http.post("/query", content=_form(self._params(q)), headers=_FORM)
        return _parse(response)

    async def execute_all(self, statements: Sequence[str]) -> list[list[Series]]:
        """Run ``statements`` in one POST (joined by ``;``; InfluxDB runs them in order) and
        return each one's series, in order: one request instead of several. Raises as
        :meth:`query` when any of them failed."""
        http = self._opened()
        with self._translated():
            body = _form(self._params("; ".join(statements)))
            response = await http.post("/query", content=body, headers=_FORM)
        return [_series_of([r], response.status_code) for r in _results(response)]

    async def server_version(self) -> str | None:
        """The version InfluxDB announces (``X-Influxdb-Version`` of ``/ping``: ``1.8.10``,
        ``v2.7.4``, ``3.0.1``...), or None when it names none."""
        http = self._opened()
        with self._translated():
            response = await http.get("/ping")
        if response.status_code >= 400:
            _parse(response)  # raises the error it carries
        version = response.headers.get("X-Influxdb-Version")
        return None if version is None else str(version)

    async def query_chunked(self, q: str, *, yield_every: int = 200) -> list[Series]:
        """:meth:`query` for answers of many series: InfluxDB streams them (``chunked=true``,
        one JSON document per series) and each is parsed as it comes, handing the event loop
        back every ``yield_every`` documents. One ``orjson.loads`` of the newest point of 10,000
        chargers (1.4 MB) held the loop for ~70 ms, during which no request was answered."""
        series: list[Series] = []
        documents = 0
        async for chunk in self.query_stream(q):
            series.extend(chunk)
            documents += 1
            if documents % yield_every == 0:
                await asyncio.sleep(0)
        return series

    async def query_stream(
        self, q: str, *, chunk_size: int = CHUNK_POINTS
    ) -> AsyncIterator[list[Series]]:
        """The answer to ``q`` as InfluxDB streams it (``chunked=true``): the series of each
        document (at most ``chunk_size`` points of one series) as it arrives, so an answer of
        any size is read with one document in memory (the fleet's session export). Closing the
        iterator early closes the HTTP stream."""
        http = self._opened()
        params = self._params(q, chunked="true", chunk_size=str(chunk_size))
        with self._translated():
            async with http.stream("GET", "/query", params=params) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _parse(response)  # raises the error it carries
                    return
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        results = orjson.loads(line)["results"]
                    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                        raise InfluxQueryError(
                            f"unexpected answer: {line[:200]!r}", status=response.status_code
                        ) from exc
                    yield _series_of(results, response.status_code)

    def _opened(self) -> httpx.AsyncClient:
        if self._state is not _State.OPENED or self._http is None:
            raise RuntimeError(f"the InfluxQL client is {self._state.value}, not opened")
        return self._http

    def _params(self, q: str, **extra: str) -> dict[str, str]:
        return {"db": self._settings.database, "epoch": self._epoch, "q": q, **extra}

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx's transport errors as :class:`InfluxUnavailable`."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise InfluxUnavailable(f"timed out after {self._settings.timeout_s}s") from exc
        except httpx.HTTPError as exc:
            raise InfluxUnavailable(f"{type(exc).__name__}: {exc}") from exc


_FORM: Final = {"Content-Type": "application/x-www-form-urlencoded"}
#: ASCII as ``urllib.parse.quote_plus`` encodes it, in one ``str.translate`` (quote_plus looks
#: up each character: about a tenth of a rollup pass's CPU, for ~2,000 characters of InfluxQL).
_FORM_ESCAPES: Final = str.maketrans(
    {
        chr(i): "+" if i == 32 else f"%{i:02X}"
        for i in range(128)
        if not (chr(i).isalnum() or chr(i) in "_.-~")
    }
)


def _form(params: dict[str, str]) -> bytes:
    """``params`` as an ``application/x-www-form-urlencoded`` body."""
    return "&".join(
        f"{k}={v.translate(_FORM_ESCAPES) if v.isascii() else urllib.parse.quote_plus(v)}"
        for k, v in params.items()
    ).encode()


def _error_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.headers.get("X-Influxdb-Error") or response.text[:200] or response.reason_phrase


def _parse(response: httpx.Response) -> list[Series]:
    return _series_of(_results(response), response.status_code)


def _results(response: httpx.Response) -> list[Any]:
    """The ``results`` of an answer (an HTTP error raised as ours)."""
    status = response.status_code
    if status >= 500 or status in (401, 403):
        raise InfluxUnavailable(_error_message(response), status=status)
    if status >= 400:
        raise InfluxQueryError(_error_message(response), status=status)
    try:
        body = orjson.loads(response.content)
        results = body["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InfluxQueryError(
            f"unexpected answer: {response.text[:200]!r}", status=status
        ) from exc
    if not isinstance(results, list):
        raise InfluxQueryError(f"unexpected answer: {response.text[:200]!r}", status=status)
    return results


def _series_of(results: Any, status: int) -> list[Series]:
    """The series of an answer's ``results`` (an error in one of them raised as ours)."""
    series: list[Series] = []
    for result in results:
        if "error" in result:
            message = str(result["error"])
            if message.startswith("database not found"):
                raise InfluxUnavailable(message, status=status)
            raise InfluxQueryError(message, status=status)
        for s in result.get("series", ()):
            series.append(
                Series(
                    name=s.get("name", ""),
                    columns=list(s["columns"]),
                    values=[list(v) for v in s.get("values", ())],
                    tags=dict(s.get("tags", {})),
                )
            )
    return series
