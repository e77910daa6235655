"""Liveness: answers while the process serves HTTP, needs no key and touches no dependency."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@router.get("/healthz", summary="Liveness (no key needed)")
async def healthz() -> Health:
    return Health()
