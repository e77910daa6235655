"""The fleet page at ``/`` and its files under ``/static/`` (create_app + a fake InfluxQL client).

Pins what the server promises: the page and its files need no key and hold no data, carry the
security headers, are served from an allow-list (no path outside it, however spelled), stay out
of the OpenAPI document, and the vendored chart library is the one its README names. What the
page does in a browser is tested in tests/integration/query_api/test_fleet_page.py (headless
Chromium).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from query_api.app import create_app
from query_api.problems import MEDIA_TYPE
from query_api.routes import ui
from query_api.settings import ApiSettings
from tests.support.fake_influx import FakeInflux

READ = "read-key-0123456789"
STATIC = Path(ui.__file__).resolve().parent.parent / "static"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ApiSettings(keys={"read": SecretStr(READ)}), influx=FakeInflux())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


def _assert_security_headers(resp: httpx.Response) -> None:
    csp = resp.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert "http" not in csp  # no CDN or other origin
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"


def _referenced(html: str) -> list[str]:
    return re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', html)


async def test_the_page_is_html_with_the_security_headers_and_needs_no_key(
    client: httpx.AsyncClient,
) -> None:
    """GET / without any key answers the HTML page with the CSP, nosniff and no-referrer
    headers; the page names the key's header and the read role, and holds no key."""
    resp = await client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    _assert_security_headers(resp)
    assert "<title>Charger fleet" in resp.text
    assert 'id="chart"' in resp.text
    assert READ not in resp.text


async def test_the_page_has_no_inline_script_or_style_and_loads_only_local_files(
    client: httpx.AsyncClient,
) -> None:
    """Every script has a src and every stylesheet an href below static/ (relative, so a reverse
    proxy may mount the API under a prefix); no inline script, style attribute or handler, which
    the CSP would block anyway."""
    html = (await client.get("/")).text
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert re.search(r"<style\b", html) is None
    assert re.search(r"\sstyle=", html) is None
    assert re.search(r"\son[a-z]+=", html) is None
    refs = [ref for ref in _referenced(html) if ref != "data:,"]  # the empty favicon
    assert sorted(refs) == [
        "static/fleet.css",
        "static/fleet.js",
        "static/vendor/uplot/uPlot.iife.min.js",
        "static/vendor/uplot/uPlot.min.css",
    ]


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/static/fleet.js", "text/javascript; charset=utf-8"),
        ("/static/fleet.css", "text/css; charset=utf-8"),
        ("/static/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    ],
)
async def test_static_files_are_served_with_their_media_type_and_no_key(
    client: httpx.AsyncClient, path: str, media_type: str
) -> None:
    """Each file the page loads is served without a key, byte for byte as in the package, with
    its media type (nosniff makes the browser trust it) and the security headers."""
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == media_type
    assert resp.content == (STATIC / path.removeprefix("/static/")).read_bytes()
    _assert_security_headers(resp)


async def test_an_unchanged_file_is_a_304(client: httpx.AsyncClient) -> None:
    """A file carries an ETag; asking again with If-None-Match answers 304 without a body, and a
    different tag gets the file."""
    first = await client.get("/static/fleet.js")
    etag = first.headers["etag"]
    again = await client.get("/static/fleet.js", headers={"If-None-Match": f'W/"x", {etag}'})
    assert again.status_code == 304
    assert again.content == b""
    other = await client.get("/static/fleet.js", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    assert other.content == first.content


@pytest.mark.parametrize(
    "path",
    [
        "/static/%2e%2e/app.py",
        "/static/..%2Fapp.py",
        "/static/%2e%2e%2froutes%2fui.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/..%5capp.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/vendor/%2e%2e/fleet.js",
        "/static/%2e/fleet.js",
        "/static/index.html",
        "/static/vendor/uplot/LICENSE",
        "/static/vendor/README.md",
        "/static/",
        "/static/nothing.js",
    ],
)
async def test_no_path_outside_the_allow_list_is_served(
    client: httpx.AsyncClient, path: str
) -> None:
    """Traversal (plain, percent-encoded, backslash), absolute paths and files that are in the
    package but not page assets are a 404 problem, never a file's content; even a path that
    would resolve to an allowed file is refused (only the exact names are served), and the page
    itself is served at / only."""
    resp = await client.get(path)
    assert resp.status_code == 404, (path, resp.text[:200])
    assert resp.headers["content-type"] == MEDIA_TYPE
    assert "import" not in resp.text
    assert "root:" not in resp.text


def test_the_allow_list_holds_only_page_assets() -> None:
    """The files read are exactly the page, its script and style and the vendored library:
    nothing else under static/ (READMEs, licences) is reachable over HTTP."""
    assert sorted(ui.assets()) == [
        "fleet.css",
        "fleet.js",
        "index.html",
        "vendor/uplot/uPlot.iife.min.js",
        "vendor/uplot/uPlot.min.css",
    ]


async def test_the_page_and_its_files_are_not_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    """/ and /static stay out of the OpenAPI document, so API clients and the schemathesis run
    see only the API."""
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [p for p in paths if p.startswith("/static")]
    assert "/v1/chargers" in paths


async def test_the_data_endpoints_still_need_a_key(client: httpx.AsyncClient) -> None:
    """Serving the page opens nothing: /v1/chargers without a key is still 401."""
    resp = await client.get("/v1/chargers")
    assert resp.status_code == 401
    assert (await client.get("/v1/chargers", headers={"X-API-Key": READ})).status_code == 200


def test_the_script_sends_the_key_only_as_a_header() -> None:
    """fleet.js sends the key in X-API-Key and never builds a URL with it (no `key=` query
    parameter) and never parses API data as HTML (no innerHTML, no eval)."""
    js = (STATIC / "fleet.js").read_text()
    assert '"X-API-Key": key' in js
    assert "key=" not in js.replace("#key=", "")
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function"):
        assert forbidden not in js


def test_the_vendored_chart_library_matches_its_readme() -> None:
    """The vendored uPlot files are the ones the vendor README names (sha256), with their MIT
    licence beside them, and the README's version is the one in the file's banner."""
    readme = (STATIC / "vendor" / "README.md").read_text()
    listed = dict(re.findall(r"`([\w.]+)` `([0-9a-f]{64})`", readme))
    assert sorted(listed) == ["LICENSE", "uPlot.iife.min.js", "uPlot.min.css"]
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / "vendor" / "uplot" / name).read_bytes()).hexdigest() == (
            digest
        ), name
    assert "MIT License" in (STATIC / "vendor" / "uplot" / "LICENSE").read_text()
    version = re.search(r"\| uPlot \| ([0-9.]+) \|", readme)
    assert version is not None
    banner = (STATIC / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{version.group(1)})" in banner
