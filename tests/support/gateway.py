"""The real gateway over real HTTP, inside the test's event loop, on a private stack.

``serve_gateway`` wires `GatewayServices` exactly as ``ledgerbus gateway`` does,
against the test's own database, topic prefix and Redis key prefix, and serves
the app with uvicorn on a free port. ``key`` mints API keys straight in the
store (as ``ledgerbus keys create`` does) so tests can act as any tenant/role.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import uvicorn

from gateway.app import create_app
from gateway.health import ComponentCheck
from gateway.services import GatewayEndpoints, GatewayServices, open_services
from gateway.settings import GatewaySettings
from schemas.catalog import default_catalog

if TYPE_CHECKING:  # tests.conftest imports this module (through registry_server)
    from tests.conftest import StackUnderTest


def gateway_endpoints(
    stack: StackUnderTest,
    registry_url: str,
    *,
    database_url: str,
    topic_prefix: str,
    redis_url: str | None = None,
) -> GatewayEndpoints:
    """The session stack's Kafka and Redis with a test's own database and topics."""
    return GatewayEndpoints(
        kafka_bootstrap=stack.endpoints.kafka_bootstrap,
        database_url=database_url,
        redis_url=redis_url or stack.endpoints.redis_url,
        schema_registry_url=registry_url,
        topic_prefix=topic_prefix,
    )


@dataclass
class RunningGateway:
    url: str
    services: GatewayServices

    async def key(
        self,
        tenant_id: str,
        role: str = "admin",
        *,
        scopes: Sequence[str] | None = None,
        tier: str | None = None,
    ) -> str:
        created = await self.services.keys.create(
            tenant_id=tenant_id,
            role=role,
            tier=tier or self.services.settings.rate_limit_default_tier,
            scopes=scopes,
        )
        return created.token

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client for the gateway, authenticated with ``token`` when given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


def listening() -> socket.socket:
    """A listening TCP socket on a free port. Not ``socket.create_server``: its
    socket has ``proto`` 0, and asyncio sets TCP_NODELAY only on connections
    whose ``proto`` is IPPROTO_TCP, so every response would wait out the
    client's delayed ACK (40 ms) behind Nagle."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with listening() as sock:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()  # start-up failed: raise why
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await serving


@asynccontextmanager
async def serve_gateway(
    endpoints: GatewayEndpoints,
    settings: GatewaySettings | None = None,
    checks: Sequence[ComponentCheck] = (),
) -> AsyncIterator[RunningGateway]:
    pool = await asyncpg.create_pool(endpoints.database_url, min_size=1, max_size=10)
    try:
        async with (
            open_services(
                endpoints, default_catalog(), settings or GatewaySettings(), pool=pool
            ) as services,
            serve_app(create_app(checks, services=services)) as url,
        ):
            yield RunningGateway(url, services)
    finally:
        await pool.close()
