"""The gateway's schema registry over real HTTP, inside the test's event loop.

uvicorn serves the real app on a socket bound to a free port before it starts,
so there is no race for the port. Synchronous clients (confluent_kafka's) must
be called through `asyncio.to_thread`, or they would block the loop serving them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import uvicorn

from event_store.migrate import migrate
from event_store.schema_registry import SchemaRegistryStore
from gateway.app import REGISTRY_PREFIX, create_app


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
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        with socket.create_server(("127.0.0.1", 0)) as sock:
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                if serving.done():
                    serving.result()  # start-up failed: raise why
                await asyncio.sleep(0.01)
            port = sock.getsockname()[1]
            try:
                yield RunningRegistry(f"http://127.0.0.1:{port}{REGISTRY_PREFIX}", pool)
            finally:
                server.should_exit = True
                await serving
    finally:
        await pool.close()
