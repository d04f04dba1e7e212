"""``ledgerbus gateway``: the HTTP API process, wired from settings."""

from __future__ import annotations

import asyncpg
import uvicorn

from event_store.migrate import migrate
from event_store.schema_registry import SchemaRegistryStore
from gateway.app import create_app
from gateway.health import ComponentCheck
from ledgerbus.discovery import resolve_endpoints
from ledgerbus.probes import kafka_probe, postgres_probe, redis_probe
from ledgerbus.settings import Settings


async def serve(settings: Settings) -> None:
    endpoints = resolve_endpoints(settings)
    checks = [
        ComponentCheck("kafka", endpoints.kafka_bootstrap, kafka_probe(endpoints.kafka_bootstrap)),
        ComponentCheck("postgres", endpoints.database_url, postgres_probe(endpoints.database_url)),
        ComponentCheck("redis", endpoints.redis_url, redis_probe(endpoints.redis_url)),
    ]
    pool = await asyncpg.create_pool(endpoints.database_url, min_size=1, max_size=10)
    try:
        await migrate(pool)
        registry = SchemaRegistryStore(pool) if settings.serve_schema_registry else None
        app = create_app(checks, registry=registry)
        config = uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_level="info",
            access_log=False,
        )
        await uvicorn.Server(config).serve()
    finally:
        await pool.close()
