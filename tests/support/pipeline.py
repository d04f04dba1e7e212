"""A private, running ledgerbus for stream-processor tests: archiver + streams workers.

Each ``open_pipeline`` gets its own topic prefix, database and consumer groups
on the session's embedded stack, and runs the real ``ledgerbus archiver`` and
``ledgerbus streams`` commands as child processes (so tests can SIGKILL them).
Tests inside one pipeline isolate themselves by tenant (``new_tenant``), which
is also what the product promises (SPEC Guarantee 7).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from event_store.decoding import decode
from event_store.migrate import migrate
from ledgerbus.embedded.ports import free_port
from producers.publisher import Delivery, Publisher, build_event
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from tests.conftest import StackUnderTest

CATALOG = default_catalog()
READY_TIMEOUT = 90.0


@dataclass
class Process:
    """A ``ledgerbus`` child process whose /metrics port is its readiness probe."""

    name: str
    popen: subprocess.Popen[bytes]
    metrics_port: int

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
            while True:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.popen.returncode}")
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no leave-group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for a clean exit (SIGKILL after ``timeout``)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


@dataclass
class Pipeline:
    """Handles on one private deployment: its env, database, publisher and processes."""

    env: dict[str, str]
    topic_prefix: str
    database_url: str
    pool: asyncpg.Pool
    publisher: Publisher
    deserializer: EventDeserializer
    log_dir: Path
    processes: list[Process] = field(default_factory=list)

    @staticmethod
    def new_tenant() -> str:
        return f"tenant-{uuid.uuid4().hex[:10]}"

    def start(self, command: str, *args: str, extra_env: Mapping[str, str] = {}) -> Process:
        """``ledgerbus COMMAND ARGS --metrics-port N`` with this pipeline's env."""
        port = free_port()
        name = f"{command}-{len(self.processes)}"
        with (self.log_dir / f"{name}.log").open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "ledgerbus", command, *args, "--metrics-port", str(port)],
                env={**os.environ, **self.env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = Process(name, popen, port)
        self.processes.append(process)
        return process

    async def publish(
        self,
        event_type: str,
        *,
        tenant_id: str,
        subject: str,
        data: Mapping[str, Any],
        correlation_id: str | None = None,
    ) -> Delivery:
        event = build_event(
            CATALOG.get(event_type),
            subject=subject,
            tenant_id=tenant_id,
            data=data,
            source="test",
            correlation_id=correlation_id,
        )
        return await self.publisher.publish(event)

    async def archived(self, tenant_id: str, *types: str) -> list[Envelope[Any]]:
        """The tenant's archived events of ``types`` (all when none), in position order."""
        rows = await self.pool.fetch(
            "SELECT body, schema_id FROM events WHERE tenant_id = $1 "
            "AND (cardinality($2::text[]) = 0 OR type = ANY($2::text[])) ORDER BY position",
            tenant_id,
            list(types),
        )
        return [await decode(self.deserializer, row["schema_id"], row["body"]) for row in rows]


@asynccontextmanager
async def open_pipeline(
    stack: StackUnderTest,
    registry_url: str,
    log_dir: Path,
    *,
    workers: int = 1,
    extra_env: Mapping[str, str] = {},
) -> AsyncIterator[Pipeline]:
    """A private deployment with a running archiver and ``workers`` streams workers."""
    token = uuid.uuid4().hex[:10]
    database = f"pipeline_{token}"
    prefix = f"p{token}."
    admin = await asyncpg.connect(stack.endpoints.database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    database_url = urlsplit(stack.endpoints.database_url)._replace(path=f"/{database}").geturl()
    env = {
        **stack.endpoints.as_env(),
        "LEDGERBUS_DATABASE_URL": database_url,
        "LEDGERBUS_SCHEMA_REGISTRY_URL": registry_url,
        "LEDGERBUS_TOPIC_PREFIX": prefix,
        "LEDGERBUS_DATA_DIR": str(log_dir / ".ledgerbus"),
        **extra_env,
    }
    async with AsyncExitStack() as exits:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        exits.push_async_callback(pool.close)
        await migrate(pool)
        await ensure_topics(stack.endpoints.kafka_bootstrap, prefix)
        registry = RegistryClient(registry_url)
        exits.push_async_callback(registry.aclose)
        publisher = Publisher(
            stack.endpoints.kafka_bootstrap,
            EventSerializer(CATALOG, registry, prefix),
            source="test",
        )
        await exits.enter_async_context(publisher)
        pipeline = Pipeline(
            env,
            prefix,
            database_url,
            pool,
            publisher,
            EventDeserializer(CATALOG, registry),
            log_dir,
        )

        async def stop_all() -> None:
            for process in reversed(pipeline.processes):
                if process.popen.poll() is None:
                    with suppress(subprocess.TimeoutExpired):
                        await process.stop()

        exits.push_async_callback(stop_all)
        started = [pipeline.start("archiver", "--checkpoint-seconds", "3600")]
        started += [pipeline.start("streams") for _ in range(workers)]
        await asyncio.gather(*(process.wait_ready() for process in started))
        yield pipeline
    admin = await asyncpg.connect(stack.endpoints.database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()
