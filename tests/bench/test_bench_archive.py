"""Archive throughput: ``EventStore.append`` vs the ``eventsourcing`` library, and
Kafka -> archive sustained ingest vs raw aiokafka reading the same records.

Baselines run in the same session on the same embedded PostgreSQL and broker.
Prints figures; asserts only correctness. ``make bench``.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import astuple, fields
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig
from event_store.chain import GENESIS
from event_store.migrate import migrate
from event_store.store import EventStore, NewEvent
from producers.topics import ensure_topics
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from streams.archiver import Archiver, archive_topics
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import CATALOG, mixed_events
from tests.support.events import new_event

APPEND_EVENTS = 10_000
APPEND_BATCH = 1000
APPEND_RUNS = 3
TENANTS = 4
BODY_BYTES = 300
INGEST_EVENTS = 200_000


class Ledger(Aggregate):
    """One tenant's history as an eventsourcing aggregate: its version is the position."""

    @event("Appended")
    def append(self, event_id: str, body: str) -> None:
        """The event is the state change; nothing to fold."""


class LedgerApp(Application[uuid.UUID]):
    pass


def rate(events: int, seconds: float) -> str:
    return f"{events / seconds:>10,.0f} events/s"


def eventsourcing_app(database_url: str, dbname: str) -> LedgerApp:
    url = urlsplit(database_url)
    return LedgerApp(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": url.username or "postgres",
            "POSTGRES_PASSWORD": url.password or "",
        }
    )


def eventsourcing_append(app: LedgerApp, events: list[NewEvent], per_save: int) -> float:
    """Seconds to save ``events`` into per-tenant aggregates, ``per_save`` per transaction."""
    ledgers = {tenant: Ledger() for tenant in sorted({e.tenant_id for e in events})}
    app.save(*ledgers.values())
    pending: dict[str, int] = dict.fromkeys(ledgers, 0)
    began = time.perf_counter()
    for archived in events:
        ledger = ledgers[archived.tenant_id]
        ledger.append(str(archived.event_id), base64.b64encode(archived.body).decode())
        pending[archived.tenant_id] += 1
        if pending[archived.tenant_id] == per_save:
            app.save(ledger)
            pending[archived.tenant_id] = 0
    app.save(*ledgers.values())
    return time.perf_counter() - began


def events_for(run: int) -> list[NewEvent]:
    tenants = [f"tenant-{run}-{t}" for t in range(TENANTS)]
    return [new_event(tenants[n % TENANTS], n, size=BODY_BYTES) for n in range(APPEND_EVENTS)]


async def test_append_throughput_vs_eventsourcing(
    stack: StackUnderTest, isolation: Isolation
) -> None:
    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=2)
    await migrate(pool)
    store = EventStore(pool)
    try:
        ours = []
        for run in range(APPEND_RUNS):
            events = events_for(run)
            began = time.perf_counter()
            for i in range(0, len(events), APPEND_BATCH):
                result = await store.append(events[i : i + APPEND_BATCH])
                assert result.appended == len(events[i : i + APPEND_BATCH])
            ours.append(time.perf_counter() - began)
        best = min(ours)

        # Ceiling: the same rows and indexes, COPYed with no dedup, locks or chaining.
        columns = [field.name for field in fields(NewEvent)] + ["position", "prev_hash", "hash"]
        rows = [
            (*astuple(e), n + 1, GENESIS, GENESIS) for n, e in enumerate(events_for(APPEND_RUNS))
        ]
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
            began = time.perf_counter()
            for i in range(0, len(rows), APPEND_BATCH):
                await conn.copy_records_to_table(
                    "raw_events", records=rows[i : i + APPEND_BATCH], columns=columns
                )
            raw_copy = time.perf_counter() - began
        assert await pool.fetchval("SELECT count(*) FROM events") == APPEND_RUNS * APPEND_EVENTS
    finally:
        await pool.close()

    admin = await asyncpg.connect(stack.endpoints.database_url)
    dbname = f"es_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        app = eventsourcing_app(stack.endpoints.database_url, dbname)
        per_event = await asyncio.to_thread(eventsourcing_append, app, events_for(0), 1)
        per_ten = await asyncio.to_thread(eventsourcing_append, app, events_for(1), 10)
        assert app.recorder.max_notification_id() == 2 * (APPEND_EVENTS + TENANTS)
        app.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()

    n = APPEND_EVENTS
    print(f"\nappend {n:,} events of {BODY_BYTES} B over {TENANTS} tenants, {APPEND_BATCH}/batch")
    print(f"  EventStore.append, chained          {rate(n, best)}  (best of {APPEND_RUNS})")
    for name, seconds in (("10 per transaction", per_ten), ("1 per transaction", per_event)):
        print(f"  eventsourcing, {name:<20} {rate(n, seconds)}  ours {seconds / best:5.1f}x")
    print(f"  ceiling: raw COPY, same indexes     {rate(n, raw_copy)}")


async def publish(bootstrap: str, serializer: EventSerializer, tenants: list[str]) -> int:
    """``INGEST_EVENTS`` events, encoded by ledgerbus's serializer, produced raw."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, acks="all"
    )
    await producer.start()
    try:
        chunk = 10_000
        for _ in range(0, INGEST_EVENTS, chunk):
            records = [await serializer.serialize(e) for e in mixed_events(tenants, chunk)]
            sent = [
                await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
                for r in records
            ]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return INGEST_EVENTS


async def raw_read(bootstrap: str, topics: list[str], decode: EventDeserializer | None) -> float:
    """Seconds for a fresh group to getmany every record (and decode it, if asked),
    from its first record on, so the group join is not counted."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
    )
    await consumer.start()
    seen, began = 0, 0.0
    try:
        while seen < INGEST_EVENTS:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                began = began or time.perf_counter()
                if decode is not None:
                    for record in records:
                        await decode.read(record.value)
                seen += len(records)
    finally:
        await consumer.stop()
    return time.perf_counter() - began


async def test_kafka_to_archive_sustained_ingest(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> None:
    bootstrap = stack.endpoints.kafka_bootstrap
    await ensure_topics(bootstrap, isolation.topic_prefix)
    tenants = [f"{isolation.tenant_id}-{t}" for t in range(TENANTS)]
    serializer = EventSerializer(CATALOG, registry, isolation.topic_prefix)
    began = time.perf_counter()
    published = await publish(bootstrap, serializer, tenants)
    print(f"\npre-published {published:,} events in {time.perf_counter() - began:.1f}s")

    pool = await asyncpg.create_pool(isolation.database_url, min_size=1, max_size=2)
    await migrate(pool)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    group = f"archiver-{uuid.uuid4()}"
    topics = archive_topics(isolation.topic_prefix)
    appended_at: list[float] = []

    async def appended(_: Any) -> None:
        appended_at.append(time.perf_counter())

    archiver = Archiver(
        ConsumerConfig(bootstrap, group, topics, max_poll_records=2000),
        EventDeserializer(CATALOG, registry),
        EventStore(pool),
        DeadLetters(producer, group),
        on_appended=appended,
    )
    lag: list[tuple[float, int]] = []
    try:
        await archiver.start()
        running = asyncio.create_task(archiver.run())
        while archiver.archived < published:
            await asyncio.sleep(0.5)
            if appended_at:
                lag.append((time.perf_counter() - appended_at[0], published - archiver.archived))
        archiver.request_stop()
        await running
        await archiver.stop()
        assert await pool.fetchval("SELECT count(*) FROM events") == published
    finally:
        await producer.stop()
        await pool.close()
    ours = appended_at[-1] - appended_at[0]

    raw = await raw_read(bootstrap, topics, None)
    decoded = await raw_read(bootstrap, topics, EventDeserializer(CATALOG, registry))
    print(f"Kafka -> archive, {published:,} events, {len(appended_at)} appends")
    print(f"  Archiver (read + append + commit) {rate(published, ours)}")
    print(f"  raw aiokafka getmany, no decode   {rate(published, raw)}  (ours at {raw / ours:.0%})")
    print(f"  getmany + EventDeserializer.read  {rate(published, decoded)}")
    print("  lag (events not yet archived) every 0.5 s from the first append:")
    print("   " + ", ".join(f"{t:.1f}s:{left:,}" for t, left in lag))
