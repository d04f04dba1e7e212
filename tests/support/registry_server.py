"""The gateway's schema registry over real HTTP, inside the test's event loop.

Synchronous clients (confluent_kafka's) must be called through
`asyncio.to_thread`, or they would block the loop serving them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from event_store.migrate import migrate
from event_store.schema_registry import SchemaRegistryStore
from gateway.app import REGISTRY_PREFIX, create_app
from tests.support.gateway import serve_app


@dataclass(frozen=True)
class RunningRegistry:
    url: str
    pool: asyncpg.Pool


@asynccontextmanager
async def serve_registry(database_url: str) -> AsyncIterator[RunningRegistry]:
    """Migrate the database, then serve the gateway with the registry until the block ends."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    try:
        await migrate(pool)
        app = create_app([], registry=SchemaRegistryStore(pool))
        async with serve_app(app) as url:
            yield RunningRegistry(f"{url}{REGISTRY_PREFIX}", pool)
    finally:
        await pool.close()
