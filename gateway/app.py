"""The HTTP gateway: one FastAPI app, its dependencies passed in."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from event_store.schema_registry import SchemaRegistryStore
from gateway.body_limit import BodyLimitMiddleware
from gateway.health import ComponentCheck, health_router
from gateway.metrics import MetricsMiddleware
from gateway.problems import install_problem_handlers
from gateway.registry import registry_router
from gateway.request_log import RequestLogMiddleware
from gateway.routes.agents import agents_router
from gateway.routes.api_keys import api_keys_router
from gateway.routes.approvals import approvals_router
from gateway.routes.audit import audit_router
from gateway.routes.budgets import budgets_router
from gateway.routes.events import events_router
from gateway.routes.runs import runs_router
from gateway.routes.webhooks import webhooks_router
from gateway.services import GatewayServices
from gateway.streams.routes import streams_router

#: Where the schema registry API lives when this gateway serves it.
REGISTRY_PREFIX = "/registry"

DESCRIPTION = """\
The public API of ledgerbus. Authenticate with `Authorization: Bearer <key>`
(an API key `lb_<id>_<secret>` or a JWT). Every request runs in the tenant of
its credential. Errors are RFC 9457 problem details (`application/problem+json`).
"""


def create_app(
    checks: Sequence[ComponentCheck],
    registry: SchemaRegistryStore | None = None,
    services: GatewayServices | None = None,
) -> FastAPI:
    """The gateway; with `registry`, it also serves the schema registry under `/registry`;
    with `services`, the ``/v1`` API."""
    app = FastAPI(
        title="ledgerbus",
        summary="Event-sourced message bus for AI agent workforces",
        description=DESCRIPTION,
        version="0.1.0",
    )
    install_problem_handlers(app)
    app.include_router(health_router(checks))
    if registry is not None:
        app.include_router(registry_router(registry), prefix=REGISTRY_PREFIX)
    if services is not None:
        app.state.services = services
        app.include_router(api_keys_router())
        app.include_router(webhooks_router())
        app.include_router(audit_router())
        app.include_router(budgets_router())
        app.include_router(approvals_router())
        app.include_router(agents_router())
        app.include_router(runs_router())
        app.include_router(events_router())
        app.include_router(streams_router())

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware)
    if services is not None:
        app.add_middleware(BodyLimitMiddleware, max_bytes=services.settings.max_body_bytes)
    app.add_middleware(RequestLogMiddleware)
    return app
