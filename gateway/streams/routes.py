"""Both stream endpoints, for the app to include at once."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.streams.sse import sse_router
from gateway.streams.ws import ws_router


def streams_router() -> APIRouter:
    router = APIRouter()
    router.include_router(sse_router())
    router.include_router(ws_router())
    return router
