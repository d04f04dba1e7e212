"""The HTTP gateway: one FastAPI app, its dependencies passed in."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.health import ComponentCheck, health_router
from gateway.metrics import MetricsMiddleware


def create_app(checks: Sequence[ComponentCheck]) -> FastAPI:
    app = FastAPI(
        title="ledgerbus",
        summary="Event-sourced message bus for AI agent workforces",
        version="0.1.0",
    )
    app.include_router(health_router(checks))

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware)
    return app
