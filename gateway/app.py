"""The HTTP gateway: one FastAPI app, its dependencies passed in."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from event_store.schema_registry import SchemaRegistryStore
from gateway.health import ComponentCheck, health_router
from gateway.metrics import MetricsMiddleware
from gateway.registry import registry_router

#: Where the schema registry API lives when this gateway serves it.
REGISTRY_PREFIX = "/registry"


def create_app(
    checks: Sequence[ComponentCheck], registry: SchemaRegistryStore | None = None
) -> FastAPI:
    """The gateway; with `registry`, it also serves the schema registry under `/registry`."""
    app = FastAPI(
        title="ledgerbus",
        summary="Event-sourced message bus for AI agent workforces",
        version="0.1.0",
    )
    app.include_router(health_router(checks))
    if registry is not None:
        app.include_router(registry_router(registry), prefix=REGISTRY_PREFIX)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware)
    return app
