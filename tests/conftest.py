"""Session-wide embedded stack and per-test isolation.

One real Kafka (Tansu), PostgreSQL and Redis start once per test session
(external ones are used instead when ``LEDGERBUS_*`` endpoints are set).
Each test gets its own names: a topic prefix, a tenant id, a fresh database
and a Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from ledgerbus.embedded.stack import Endpoints, infrastructure
from ledgerbus.settings import load_settings
from ledgerbus.supervisor import Supervisor
from schemas.registry_client import RegistryClient
from tests.support.registry_server import serve_registry

# Consumer groups in tests: a SIGKILLed member's partitions move after ~3 s
# instead of ~9 s, and a new group's first assignment comes after 1 s instead
# of 3 s (the embedded broker waits half the session timeout). Every ledgerbus
# process the tests start inherits it.
os.environ.setdefault("LEDGERBUS_SESSION_TIMEOUT", "2")


@dataclass(frozen=True)
class StackUnderTest:
    endpoints: Endpoints
    supervisor: Supervisor
    data_dir: Path


@dataclass(frozen=True)
class Isolation:
    """Names private to one test."""

    topic_prefix: str
    tenant_id: str
    redis_prefix: str
    database_url: str


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StackUnderTest]:
    data_dir = tmp_path_factory.mktemp("stack") / ".ledgerbus"
    settings = load_settings(data_dir=data_dir)
    servers, endpoints = infrastructure(settings)
    supervisor = Supervisor([servers])
    await supervisor.start()
    try:
        yield StackUnderTest(endpoints, supervisor, data_dir)
    finally:
        await supervisor.stop()


@pytest.fixture(scope="session")
async def registry_url(stack: StackUnderTest) -> AsyncIterator[str]:
    """The gateway's schema registry over real HTTP, stored in its own database."""
    admin = await asyncpg.connect(stack.endpoints.database_url)
    await admin.execute('CREATE DATABASE "registry"')
    await admin.close()
    async with serve_registry(_with_database(stack.endpoints.database_url, "registry")) as served:
        yield served.url


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[RegistryClient]:
    client = RegistryClient(registry_url)
    yield client
    await client.aclose()


def _with_database(url: str, database: str) -> str:
    return urlsplit(url)._replace(path=f"/{database}").geturl()


@pytest.fixture
async def isolation(stack: StackUnderTest) -> AsyncIterator[Isolation]:
    token = uuid.uuid4().hex[:10]
    database = f"test_{token}"
    admin = await asyncpg.connect(stack.endpoints.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        yield Isolation(
            topic_prefix=f"t{token}.",
            tenant_id=f"tenant-{token}",
            redis_prefix=f"test:{token}:",
            database_url=_with_database(stack.endpoints.database_url, database),
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
