"""Fixtures shared by integration tests: a publisher and the CLI's environment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from event_store.migrate import migrate
from event_store.store import EventStore
from gateway.settings import GatewaySettings
from producers.publisher import Publisher
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventSerializer
from tests.conftest import Isolation, StackUnderTest
from tests.support.gateway import RunningGateway, gateway_endpoints, serve_gateway
from tests.support.receiver import Receiver, serve_receiver

CATALOG = default_catalog()


@pytest.fixture
async def publisher(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> AsyncIterator[Publisher]:
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    serializer = EventSerializer(CATALOG, registry, isolation.topic_prefix)
    async with Publisher(stack.endpoints.kafka_bootstrap, serializer, source="test") as pub:
        yield pub


@pytest.fixture
def cli_env(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, tmp_path: Path
) -> dict[str, str]:
    return {
        **stack.endpoints.as_env(),
        "LEDGERBUS_SCHEMA_REGISTRY_URL": registry_url,
        "LEDGERBUS_TOPIC_PREFIX": isolation.topic_prefix,
        "LEDGERBUS_DATA_DIR": str(tmp_path / ".ledgerbus"),
    }


@pytest.fixture
async def db_pool(isolation: Isolation) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own, migrated database."""
    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=8)
    await migrate(pool)
    yield pool
    await pool.close()


@pytest.fixture
def event_store(db_pool: asyncpg.Pool) -> EventStore:
    return EventStore(db_pool)


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver over real HTTP, shared by one test module."""
    async with serve_receiver() as running:
        yield running


@pytest.fixture
async def gateway(
    stack: StackUnderTest, isolation: Isolation, registry_url: str
) -> AsyncIterator[RunningGateway]:
    """The real gateway over HTTP on the test's private database, topics and Redis keys."""
    endpoints = gateway_endpoints(
        stack,
        registry_url,
        database_url=isolation.database_url,
        topic_prefix=isolation.topic_prefix,
    )
    settings = GatewaySettings(redis_key_prefix=isolation.redis_prefix)
    async with serve_gateway(endpoints, settings) as running:
        yield running
