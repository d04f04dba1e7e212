"""The checkpointer on the real stack: when it signs, what it publishes, and no storms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from event_store.audit import verify_chain
from event_store.checkpoints import Checkpoint, CheckpointKeys, Signer, checkpoint_decoder
from event_store.store import EventStore
from producers.publisher import Publisher
from schemas.catalog import default_catalog
from schemas.models import AuditCheckpoint, Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from schemas.topics import physical_name
from streams.checkpoints import Checkpointer
from tests.conftest import Isolation, StackUnderTest
from tests.support.archived import archive
from tests.support.events import new_event

CATALOG = default_catalog()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def published_total() -> float:
    return REGISTRY.get_sample_value("ledgerbus_audit_checkpoints_total") or 0.0


class AuditTopic:
    """Reads the checkpoints published on the test's audit topic, in order."""

    def __init__(self, stack: StackUnderTest, isolation: Isolation, registry: RegistryClient):
        self.bootstrap = stack.endpoints.kafka_bootstrap
        self.topic = physical_name("audit", isolation.topic_prefix)
        self.deserializer = EventDeserializer(CATALOG, registry)
        self.seen: list[Envelope[Any]] = []

    async def read(self, count: int) -> list[Envelope[Any]]:
        """The first ``count`` checkpoint events ever published."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()  # loads the metadata partitions_for_topic reads
            partitions = [
                TopicPartition(self.topic, p)
                for p in sorted(consumer.partitions_for_topic(self.topic) or ())
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            events: list[Envelope[Any]] = []
            async with asyncio.timeout(20):
                while len(events) < count:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        for record in records:
                            events.append(await self.deserializer.deserialize(record.value))
            return events
        finally:
            await consumer.stop()


@pytest.fixture
def audit_topic(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> AuditTopic:
    return AuditTopic(stack, isolation, registry)


def payload(event: Envelope[Any]) -> AuditCheckpoint:
    assert isinstance(event.data, AuditCheckpoint)
    return event.data


async def test_checkpoints_by_count_and_time_without_storms(
    event_store: EventStore,
    publisher: Publisher,
    registry: RegistryClient,
    audit_topic: AuditTopic,
) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    clock = Clock()
    serializer = EventSerializer(CATALOG, registry)

    def checkpointer() -> Checkpointer:
        return Checkpointer(
            event_store, publisher, signer, every_events=10, every_seconds=60, clock=clock
        )

    async def append(checkpoints: Checkpointer, tenant: str, count: int) -> None:
        await checkpoints.after_append(
            await event_store.append([new_event(tenant, n) for n in range(count)])
        )

    first = checkpointer()
    before = published_total()
    await append(first, "acme", 7)
    await append(first, "globex", 3)
    assert published_total() == before
    await append(first, "acme", 5)  # 12 events: due by count
    assert published_total() == before + 1
    (event,) = await audit_topic.read(1)
    head = await event_store.head("acme")
    assert (event.tenant_id, event.subject) == ("acme", "audit:acme")
    assert (payload(event).position, payload(event).head_hash) == (12, head.hash)
    assert Checkpoint.from_payload("acme", payload(event)).signed_by(signer.public_key)

    # The checkpoint is archived at position 13; alone, it never triggers another.
    # After 61 s only globex, idle since its 3 events, is due.
    await first.after_append(await archive(event_store, serializer, [event]))
    clock.now += 61
    await first.tick()
    assert published_total() == before + 2

    await append(first, "acme", 1)  # one event, 61 s after acme's checkpoint: due by time
    assert published_total() == before + 3

    # A restarted checkpointer resumes from the last archived checkpoint (13):
    # four events since, and its clock starts afresh, so nothing yet...
    restarted = checkpointer()
    await append(restarted, "acme", 3)
    assert published_total() == before + 3
    clock.now += 61
    await restarted.tick()  # ...until their time is up, with no append to wake it
    assert published_total() == before + 4

    events = await audit_topic.read(4)
    by_tenant = {
        tenant: [e for e in events if e.tenant_id == tenant] for tenant in ("acme", "globex")
    }
    assert [payload(e).position for e in by_tenant["acme"]] == [12, 14, 17]
    assert [payload(e).position for e in by_tenant["globex"]] == [3]
    await archive(event_store, serializer, by_tenant["acme"][1:] + by_tenant["globex"])
    keys = CheckpointKeys(
        checkpoint_decoder(EventDeserializer(CATALOG, registry)),
        {signer.key_id: signer.public_key},
    )
    result = await verify_chain(event_store.pool, "acme", checkpoints=keys)
    assert result.ok, result.failure
    assert (result.length, result.checkpoints) == (19, 3)
    globex = await verify_chain(event_store.pool, "globex", checkpoints=keys)
    assert (globex.ok, globex.length, globex.checkpoints) == (True, 4, 1)


def test_schedule_must_be_positive(event_store: EventStore, publisher: Publisher) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="every_events"):
        Checkpointer(event_store, publisher, signer, every_events=0)
    with pytest.raises(ValueError, match="every_seconds"):
        Checkpointer(event_store, publisher, signer, every_seconds=0)
