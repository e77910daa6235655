"""``/v1/enrollment``: a gateway gets its certificate signed (no API key; a one-time token or
the current certificate's key). See :mod:`query_api.enrollment` and docs/query-api.md."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from query_api.deps import Settings
from query_api.enrollment import MAX_BODY, PEM_MEDIA_TYPE, handle
from query_api.problems import problem_responses, read_body

router = APIRouter(prefix="/v1/enrollment", tags=["enrollment"])

_PEM: dict[int | str, dict[str, Any]] = {
    200: {"content": {PEM_MEDIA_TYPE: {}}, "description": "certificate + CA (PEM)"}
}


@router.post(
    "",
    summary="Enrol a gateway: sign its CSR against a one-time token",
    response_class=Response,
    responses={**_PEM, **problem_responses(400, 401, 403, 404, 413, 503)},
)
async def enrol(
    request: Request,
    settings: Settings,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Body: the CSR (PEM) or ``{"csr": PEM}``; ``Authorization: Bearer <token>`` from
    ``telemetry-stack pki token ID``. The token is used up by the signature."""
    chain = await handle(
        "token",
        settings.pki_dir,
        await read_body(request, MAX_BODY),
        authorization,
        settings.enrollment_cert_days,
        request.app.state.metrics,
    )
    return Response(chain, media_type=PEM_MEDIA_TYPE)


@router.post(
    "/renew",
    summary="Renew a gateway's certificate: sign a new CSR for the holder of the current key",
    response_class=Response,
    responses={**_PEM, **problem_responses(400, 403, 404, 413, 503)},
)
async def renew(request: Request, settings: Settings) -> Response:
    """Body ``{"csr", "certificate", "signature"}``: ``signature`` (base64) is the current
    key's signature over the new CSR's DER (SHA-256)."""
    chain = await handle(
        "renew",
        settings.pki_dir,
        await read_body(request, MAX_BODY),
        None,
        settings.enrollment_cert_days,
        request.app.state.metrics,
    )
    return Response(chain, media_type=PEM_MEDIA_TYPE)
