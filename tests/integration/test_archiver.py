"""The archiver on the real stack: Kafka in, each event once in its tenant's chain."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from fastavro import schemaless_writer
from prometheus_client import REGISTRY

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig
from event_store.store import AppendResult, EventStore
from producers.publisher import Publisher
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer
from schemas.topics import dead_letter_name
from streams.archiver import Archiver, OnAppended, archive_topics
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import (
    CATALOG,
    archived_offsets,
    assert_archived_once,
    committed_offsets,
    eventually,
    ids_by_tenant,
    mixed_events,
    wait_archived,
)
from tests.support.cli import run_cli
from tests.support.devproc import DevProcess
from tests.support.kafka import SESSION_TIMEOUT_MS, read_all


@dataclass
class Running:
    archiver: Archiver
    task: asyncio.Task[None]

    @property
    def seen(self) -> int:
        return self.archiver.archived + self.archiver.duplicates

    async def drain(self) -> None:
        self.archiver.request_stop()
        await self.task
        await self.archiver.stop()


StartArchiver = Callable[..., Awaitable[Running]]


@pytest.fixture
async def producer(stack: StackUnderTest) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.endpoints.kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
async def start_archiver(
    stack: StackUnderTest,
    isolation: Isolation,
    registry: RegistryClient,
    event_store: EventStore,
    producer: AIOKafkaProducer,
) -> AsyncIterator[StartArchiver]:
    """Archivers running in this process; each call makes a new consumer group."""
    started: list[Running] = []

    async def start(*, on_appended: OnAppended | None = None, batch: int = 1000) -> Running:
        group = f"archiver-{uuid.uuid4()}"
        config = ConsumerConfig(
            stack.endpoints.kafka_bootstrap,
            group,
            archive_topics(isolation.topic_prefix),
            max_poll_records=batch,
            session_timeout_ms=SESSION_TIMEOUT_MS,
        )
        archiver = Archiver(
            config,
            EventDeserializer(CATALOG, registry),
            event_store,
            DeadLetters(producer, group),
            on_appended=on_appended,
        )
        await archiver.start()
        running = Running(archiver, asyncio.create_task(archiver.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.drain()


def tenants(isolation: Isolation) -> list[str]:
    return [f"{isolation.tenant_id}-{name}" for name in ("acme", "globex", "initech")]


async def test_archives_every_event_once_with_its_coordinates(
    isolation: Isolation,
    publisher: Publisher,
    registry: RegistryClient,
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    start_archiver: StartArchiver,
) -> None:
    events = mixed_events(tenants(isolation), 400)
    deliveries = await publisher.publish_many(events)
    results: list[AppendResult] = []

    async def appended(result: AppendResult) -> None:
        results.append(result)

    running = await start_archiver(on_appended=appended, batch=40)
    await wait_archived(db_pool, len(events))
    await running.drain()

    await assert_archived_once(event_store, ids_by_tenant(events))
    assert sum(result.appended for result in results) == len(events)
    assert len(results) > 1, "several poll batches, one append each"
    for tenant in tenants(isolation):
        offsets: dict[tuple[str | None, int | None], list[int]] = defaultdict(list)
        async for row in event_store.read(tenant):
            assert row.kafka_offset is not None
            offsets[(row.kafka_topic, row.kafka_partition)].append(row.kafka_offset)
        for in_chain_order in offsets.values():
            assert in_chain_order == sorted(in_chain_order), "partition order kept in the chain"
    deserializer = EventDeserializer(CATALOG, registry)
    for event, delivery in zip(events, deliveries, strict=True):
        stored = await event_store.get(event.id)
        assert stored is not None
        assert (stored.tenant_id, stored.type, stored.subject, stored.time) == (
            event.tenant_id,
            event.type,
            event.subject,
            event.time,
        )
        assert stored.correlation_id == event.correlation_id
        assert (stored.kafka_topic, stored.kafka_partition, stored.kafka_offset) == (
            delivery.topic,
            delivery.partition,
            delivery.offset,
        )
        framed = struct.pack(">bI", 0, stored.schema_id) + stored.body
        assert await deserializer.deserialize(framed) == event, "body is the canonical bytes"


async def test_two_archivers_at_once_never_fork_or_duplicate(
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
    start_archiver: StartArchiver,
) -> None:
    events = mixed_events(tenants(isolation), 600)
    await publisher.publish_many(events)
    # Two groups: each archiver reads every event, so each event reaches the
    # store twice, as after a crash before the offset commit.
    first, second = await asyncio.gather(start_archiver(batch=50), start_archiver(batch=70))
    await eventually(lambda: first.seen == second.seen == len(events))

    await assert_archived_once(event_store, ids_by_tenant(events))
    assert first.archiver.archived + second.archiver.archived == len(events)
    assert first.archiver.duplicates + second.archiver.duplicates == len(events)


class Crash(Exception):
    """Stands for a process dying between the database commit and the offset commit."""


async def test_crash_after_database_commit_redelivers_without_rechaining(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    start_archiver: StartArchiver,
) -> None:
    events = mixed_events(tenants(isolation), 300)
    await publisher.publish_many(events)

    async def crash(result: AppendResult) -> None:
        raise Crash  # the hook runs after the append, before the commit

    crashed = await start_archiver(on_appended=crash, batch=100)
    with pytest.raises(Crash):
        await crashed.task
    await crashed.archiver.stop()
    group = crashed.archiver.config.group_id
    stored = await db_pool.fetchval("SELECT count(*) FROM events")
    assert stored > 0
    assert (
        await committed_offsets(stack.endpoints.kafka_bootstrap, group, isolation.topic_prefix)
        == {}
    )

    # Nothing was committed, so a restart in that group and one in a new group
    # both begin at the start (a new one is not held up waiting for the dead
    # member to time out; test_archiver_kill restarts in the same group).
    again = await start_archiver()
    await wait_archived(db_pool, len(events))
    await eventually(lambda: again.seen == len(events))
    assert again.archiver.duplicates == stored, "the uncommitted batch came back and was skipped"
    await assert_archived_once(event_store, ids_by_tenant(events))


async def test_poison_is_dead_lettered_with_its_reason_and_archiving_goes_on(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    producer: AIOKafkaProducer,
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    start_archiver: StartArchiver,
) -> None:
    tenant = isolation.tenant_id
    before, after = mixed_events([tenant], 4), mixed_events([tenant], 4)
    costs = CATALOG.get("cost.recorded")
    topic = f"{isolation.topic_prefix}ledgerbus.costs"
    header = (await publisher.serializer.serialize(before[0])).value[:5]

    def avro(**envelope: object) -> bytes:
        record = {**costs.to_record(before[0]), "id": str(uuid.uuid4()), **envelope}
        buffer = io.BytesIO(header)
        buffer.seek(5)
        schemaless_writer(buffer, costs.parsed_schema, record)
        return buffer.getvalue()

    poison = {
        b'{"json": true}': "not_confluent_framed",
        b"\x00" + struct.pack(">I", 987654) + header: "unknown_schema_id",
        avro(tenant_id=""): "invalid_envelope",
        avro(type="budget.set"): "invalid_envelope",
        avro(subject="nul\x00inside"): "invalid_envelope",
    }
    await publisher.publish_many(before)
    for value in poison:
        await producer.send_and_wait(topic, value=value, key=b"poison")
    await publisher.publish_many(after)

    await start_archiver()
    await wait_archived(db_pool, len(before) + len(after))
    dead = await read_all(stack.endpoints.kafka_bootstrap, dead_letter_name(topic), len(poison))
    reasons = {record.value: dict(record.headers)["ledgerbus-dlq-reason"] for record in dead}
    assert reasons == {value: reason.encode() for value, reason in poison.items()}
    await assert_archived_once(event_store, ids_by_tenant(before + after))


async def test_database_outage_mid_append_is_retried_not_skipped(
    isolation: Isolation,
    publisher: Publisher,
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    start_archiver: StartArchiver,
) -> None:
    tenant = isolation.tenant_id
    first, second = mixed_events([tenant], 10), mixed_events([tenant], 10)
    await publisher.publish_many(first)
    running = await start_archiver()
    await wait_archived(db_pool, len(first))

    locker = await asyncpg.connect(isolation.database_url)
    try:
        # Hold the tenant's head row so the next append waits inside its
        # transaction, then kill that backend as a crash or failover would.
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("SELECT 1 FROM chain_heads WHERE tenant_id = $1 FOR UPDATE", tenant)
        await publisher.publish_many(second)
        waiting = (
            "FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )

        async def blocked() -> bool:
            return bool(await locker.fetchval(f"SELECT count(*) {waiting}"))

        await eventually(blocked)
        await locker.execute(f"SELECT pg_terminate_backend(pid) {waiting}")
        await transaction.rollback()
    finally:
        await locker.close()

    await wait_archived(db_pool, len(first) + len(second))
    await assert_archived_once(event_store, ids_by_tenant(first + second))
    retries = REGISTRY.get_sample_value(
        "ledgerbus_archive_append_retries_total", {"group": running.archiver.config.group_id}
    )
    assert retries is not None and retries >= 1


async def test_stop_drains_commits_exactly_what_was_archived(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    db_pool: asyncpg.Pool,
    start_archiver: StartArchiver,
) -> None:
    await publisher.publish_many(mixed_events(tenants(isolation), 1500))
    running = await start_archiver(batch=60)
    await wait_archived(db_pool, 1)
    await running.drain()

    committed = await committed_offsets(
        stack.endpoints.kafka_bootstrap, running.archiver.config.group_id, isolation.topic_prefix
    )
    assert committed == await archived_offsets(db_pool), "commits neither lag nor lead the archive"


async def test_cli_refuses_bad_options_before_touching_anything(
    isolation: Isolation, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "LEDGERBUS_DATABASE_URL": isolation.database_url}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        busy = await run_cli(["archiver", "--metrics-port", str(port)], env)
    assert busy.returncode == 2
    assert f"--metrics-port={port}: port {port} on 127.0.0.1 is already in use" in busy.stderr

    zero = await run_cli(["archiver", "--batch-size", "0"], env)
    assert zero.returncode == 2
    assert "Invalid value for '--batch-size'" in zero.stderr

    nowhere = await run_cli(["archiver"], {"LEDGERBUS_DATA_DIR": str(tmp_path / "empty")})
    assert nowhere.returncode == 2
    assert "error: no running `ledgerbus dev`" in nowhere.stderr

    conn = await asyncpg.connect(isolation.database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


@pytest.mark.slow
async def test_dev_archives_published_events_and_drains_on_sigterm(tmp_path: Path) -> None:
    dev = DevProcess(tmp_path)
    dev.start()
    try:
        state = dev.wait_ready()
        assert "archiver" in state["pids"]
        published = await run_cli(
            [
                "publish",
                "budget.set",
                "--subject",
                "proj-1",
                "--tenant",
                "acme",
                "--data",
                '{"project_id": "proj-1", "amount_micros": 5000000}',
            ],
            {"LEDGERBUS_DATA_DIR": str(dev.data_dir)},
        )
        assert published.returncode == 0, published.stderr
        event_id = uuid.UUID(json.loads(published.stdout)["event_id"])
        conn = await asyncpg.connect(state["database_url"])
        try:

            async def archived() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT position FROM events WHERE event_id = $1 AND tenant_id = 'acme'",
                        event_id,
                    )
                )

            await eventually(archived)
        finally:
            await conn.close()
    finally:
        assert dev.stop() == 0
    log = (dev.data_dir / "logs" / "archiver.log").read_text()
    assert "drained: last batch appended and committed; 1 events archived" in log
