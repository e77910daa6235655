"""Pipeline status through the API (role ``read``): each configured bridge's ``/status``
(``TELEMETRY_API_BRIDGE_URLS``), fetched concurrently and merged; seq gaps per gateway.

Bridges of one share group each see part of a gateway's messages, so one may suspect a gap that
another filled; the merge keeps, per gateway and seq range, the most certain state (confirmed
over suspected) and ``missing`` counts only confirmed readings.

A read key must not learn the bridges' secret (their client id and share group carry it;
mosquitto/README.md): a bridge names itself by its public name, and the names in a bridge's
document are passed through :func:`telemetry_common.redact.public_name` again here, so a bridge
of an older version cannot leak them either.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict

from query_api.auth import require
from query_api.deps import Settings
from query_api.problems import problem_responses
from telemetry_common.ids import ID_PATTERN
from telemetry_common.redact import public_name

#: How long each bridge's ``/status`` may take.
BRIDGE_TIMEOUT_S = 2.0

router = APIRouter(
    tags=["pipeline"],
    dependencies=[Depends(require("read"))],
    responses=problem_responses(401, 403, 422),
)


class Gap(BaseModel):
    first_seq: int
    last_seq: int
    missing: int | None
    state: str
    bridges: list[str]
    #: The outbox epoch the seqs belong to (null: the gateway's lifelong numbering).
    epoch: str | None = None


class BridgeStatus(BaseModel):
    url: str
    reachable: bool
    ready: bool | None = None
    error: str | None = None
    status: dict[str, Any] | None = None


class PipelineStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "bridges": [{"url": "http://127.0.0.1:9464", "reachable": True, "ready": True}],
                    "seq_gaps": {
                        "gw-1": [
                            {
                                "first_seq": 120,
                                "last_seq": 121,
                                "missing": 2,
                                "state": "confirmed",
                                "bridges": ["http://127.0.0.1:9464"],
                            }
                        ]
                    },
                    "missing": 2,
                }
            ]
        }
    )

    ready: bool
    bridges: list[BridgeStatus]
    seq_gaps: dict[str, list[Gap]]
    missing: int


class GatewayGaps(BaseModel):
    gateway_id: str
    gaps: list[Gap]
    missing: int
    bridges_unreachable: int


async def _fetch(http: httpx.AsyncClient, url: str) -> BridgeStatus:
    try:
        resp = await http.get(f"{url.rstrip('/')}/status")
        resp.raise_for_status()
        doc = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        return BridgeStatus(url=url, reachable=False, error=f"{type(exc).__name__}: {exc}")
    if not isinstance(doc, dict):
        return BridgeStatus(url=url, reachable=False, error="not a status document")
    return BridgeStatus(url=url, reachable=True, ready=bool(doc.get("ready")), status=public(doc))


#: Keys of a bridge's status document whose values carry the deployment's secret.
SECRET_KEYS = ("client_id", "share_group")


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A bridge's status document with its secret-bearing names replaced by public ones (pure)."""
    return {k: public_name(str(v)) if k in SECRET_KEYS else v for k, v in doc.items()}


def merge_gaps(bridges: list[BridgeStatus]) -> dict[str, list[Gap]]:
    """Per gateway, the union of the bridges' open gaps (pure)."""
    merged: dict[str, dict[tuple[str, int, int], Gap]] = {}
    for b in bridges:
        gaps = (b.status or {}).get("seq_gaps") or {}
        if not isinstance(gaps, dict):
            continue
        for gateway, items in gaps.items():
            for item in items if isinstance(items, list) else []:
                try:
                    epoch = item.get("epoch")
                    epoch = str(epoch) if epoch is not None else None
                    key = (epoch or "", int(item["first_seq"]), int(item["last_seq"]))
                    missing = item.get("missing")
                    missing = int(missing) if missing is not None else None
                except (KeyError, TypeError, ValueError):
                    continue
                held = merged.setdefault(str(gateway), {}).get(key)
                if held is None:
                    state = "confirmed" if missing is not None else "suspected"
                    merged[str(gateway)][key] = Gap(
                        first_seq=key[1], last_seq=key[2], missing=missing, state=state,
                        bridges=[b.url], epoch=epoch,
                    )  # fmt: skip
                    continue
                held.bridges.append(b.url)
                if missing is not None and (held.missing is None or missing < held.missing):
                    held.missing, held.state = missing, "confirmed"
    return {gw: [g[k] for k in sorted(g)] for gw, g in sorted(merged.items())}


async def _collect(settings: Settings) -> list[BridgeStatus]:
    async with httpx.AsyncClient(timeout=BRIDGE_TIMEOUT_S) as http:
        return list(
            await asyncio.gather(*(_fetch(http, str(u).rstrip("/")) for u in settings.bridge_urls))
        )


def _missing(gaps: list[Gap]) -> int:
    return sum(g.missing or 0 for g in gaps)


@router.get(
    "/v1/pipeline/status",
    summary="The bridges' status merged: readiness and seq gaps per gateway",
    response_model_exclude_none=True,
)
async def pipeline_status(settings: Settings) -> PipelineStatus:
    bridges = await _collect(settings)
    gaps = merge_gaps(bridges)
    return PipelineStatus(
        ready=bool(bridges) and all(b.ready for b in bridges),
        bridges=bridges,
        seq_gaps=gaps,
        missing=sum(_missing(g) for g in gaps.values()),
    )


@router.get("/v1/gateways/{gateway_id}/gaps", summary="Open seq gaps of one gateway")
async def gateway_gaps(
    settings: Settings,
    gateway_id: Annotated[str, Path(pattern=ID_PATTERN, examples=["gw-1"])],
) -> GatewayGaps:
    bridges = await _collect(settings)
    gaps = merge_gaps(bridges).get(gateway_id, [])
    return GatewayGaps(
        gateway_id=gateway_id,
        gaps=gaps,
        missing=_missing(gaps),
        bridges_unreachable=sum(not b.reachable for b in bridges),
    )
