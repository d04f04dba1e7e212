"""The event store's database, as commands open it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from event_store.migrate import migrate


@asynccontextmanager
async def migrated_pool(url: str, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the event store; migrations are applied first, as every process does at start."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
