"""The fleet page: ``GET /`` and its files under ``/static/``; no key needed, no data inside.

The page (``query_api/static/``: index.html, fleet.js, fleet.css and the vendored uPlot) calls
the ``/v1`` endpoints from the browser with a read key the user gives it (the URL fragment
``#key=...``, which browsers never send, or a form), kept in the tab's sessionStorage and sent as
``X-API-Key``. Both routes answer the same bytes to anyone, so they need no key.

Static files are an allow-list read once from the package (files under ``static/`` with a known
suffix) and served from memory: any other path is 404 whatever it holds (``..``, encoded
slashes, absolute paths), and no request touches the filesystem. Every answer carries
:data:`SECURITY_HEADERS`: a Content-Security-Policy that lets scripts, styles and fetches come
only from this origin (no inline script or style, no CDN), ``nosniff``, no referrer, no framing.
Both routes are left out of the OpenAPI document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from typing import Final

from fastapi import APIRouter, Request, Response

from query_api.problems import ProblemError

router = APIRouter(include_in_schema=False)

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time (the ETag makes that a 304): an upgrade is seen at once.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: Directories walked below ``static/``, and files per directory: the allow-list stays small.
MAX_DEPTH: Final = 4
MAX_FILES: Final = 100
PAGE: Final = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _walk(folder: Traversable, prefix: str, depth: int, out: dict[str, Asset]) -> None:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name)[:MAX_FILES]:
        if entry.is_dir():
            if depth < MAX_DEPTH:
                _walk(entry, f"{prefix}{entry.name}/", depth + 1, out)
            continue
        suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
        media_type = MEDIA_TYPES.get(suffix)
        if media_type is not None:
            body = entry.read_bytes()
            etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
            out[f"{prefix}{entry.name}"] = Asset(body, media_type, etag)


@cache
def assets() -> dict[str, Asset]:
    """The files the page may load, by path below ``static/`` (read once, then from memory)."""
    out: dict[str, Asset] = {}
    _walk(resources.files("query_api").joinpath("static"), "", 0, out)
    if PAGE not in out:
        raise RuntimeError("query_api/static/index.html is missing from the installed package")
    return out


def _answer(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    given = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip().removeprefix("W/") for tag in given.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def fleet_page(request: Request) -> Response:
    return _answer(request, assets()[PAGE])


@router.get("/static/{path:path}")
async def static_file(request: Request, path: str) -> Response:
    asset = assets().get(path) if path != PAGE else None  # the page is served at / only
    if asset is None:
        raise ProblemError(404, "not-found", "no such file")
    return _answer(request, asset)
