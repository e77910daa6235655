"""Every error answered as ``application/problem+json`` (RFC 9457): type, title, status, detail.

Raise :class:`ProblemError` in a route; the handlers installed by :func:`install` also turn
FastAPI's validation errors (422), Starlette's HTTP errors (404, 405) and InfluxDB failures into
problems, so no error leaves the API in another shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from telemetry_common.influx_query import InfluxError, InfluxUnavailable

log = logging.getLogger(__name__)

MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:charger-telemetry:problem:"


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, or a 413 problem as soon as it is known to exceed ``limit`` bytes
    (from its Content-Length, or while it streams in): the rest is never read into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, "too-large", f"the body exceeds {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ProblemError(413, "too-large", f"the body exceeds {limit} bytes")
    return bytes(raw)


class Problem(BaseModel):
    """The body of every error answer."""

    type: str = Field(examples=[f"{TYPE_PREFIX}not-found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no reading stored for charger 'gw-1-cp001'"])
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for 422: each invalid parameter (loc, msg, type)"
    )


class ProblemError(Exception):
    """An answer that is an error: ``slug`` names the problem type, ``detail`` says what to do."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers
        self.errors = errors


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body: dict[str, Any] = {
        "type": f"{TYPE_PREFIX}{slug}" if slug else "about:blank",
        "title": phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


_EXAMPLE_DETAIL: Final = {
    401: ("unauthenticated", "send a key in X-API-Key"),
    403: ("forbidden", "this endpoint needs a key of role 'read'"),
    404: ("not-found", "no reading stored for charger 'gw-1-cp001'"),
    422: (
        "invalid-request",
        "path.charger_id: String should match pattern '^[A-Za-z0-9._-]{1,64}$'",
    ),
    502: ("store-error", "the time-series store refused the query"),
    503: ("store-unavailable", "the time-series store is not available; retry later"),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the listed statuses documented as problems in OpenAPI."""
    schema = Problem.model_json_schema()
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        phrase = HTTPStatus(status).phrase
        slug, detail = _EXAMPLE_DETAIL.get(status, ("", phrase))
        example = {
            "type": f"{TYPE_PREFIX}{slug}" if slug else "about:blank",
            "title": phrase,
            "status": status,
            "detail": detail,
        }
        out[status] = {
            "description": phrase,
            "content": {MEDIA_TYPE: {"schema": schema, "example": example}},
        }
    return out


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status, exc.detail, slug=exc.slug, headers=exc.headers, errors=exc.errors
    )


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    detail = (
        "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        or "invalid request"
    )
    return problem_response(422, detail, slug="invalid-request", errors=jsonable_encoder(errors))


async def _on_influx(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InfluxError)
    log.error("InfluxDB query failed: %s", exc, extra={"influx_status": exc.status})
    if isinstance(exc, InfluxUnavailable):
        return problem_response(
            503, "the time-series store is not available; retry later", slug="store-unavailable"
        )
    return problem_response(502, "the time-series store refused the query", slug="store-error")


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(InfluxError, _on_influx)
