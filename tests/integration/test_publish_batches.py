"""``publish_many`` writing record batches of its own: coordinates, order, budget."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from producers.publisher import OWN_BATCH_MIN, Delivery, Publisher, build_event
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer, kafka_timestamp_ms
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import eventually
from tests.support.costs import cost_event
from tests.support.kafka import read_all

CATALOG = default_catalog()
COSTS = CATALOG.get("cost.recorded")


def cost(tenant: str, subject: str, seq: int) -> Envelope[Any]:
    return cost_event(tenant, subject, seq, cost=70_000 + seq)


async def assert_landed_where_reported(
    stack: StackUnderTest,
    registry: RegistryClient,
    events: list[Envelope[Any]],
    deliveries: list[Delivery],
) -> None:
    """Each delivery names the record holding its event, and subjects keep call order."""
    assert [d.event_id for d in deliveries] == [e.id for e in events]
    topic = deliveries[0].topic
    records = await read_all(stack.endpoints.kafka_bootstrap, topic, len(events))
    at = {(r.partition, r.offset): r for r in records}
    deserializer = EventDeserializer(CATALOG, registry)
    by_subject: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event, delivery in zip(events, deliveries, strict=True):
        record = at[(delivery.partition, delivery.offset)]
        assert await deserializer.deserialize(record.value) == event
        assert dict(record.headers)["ce_id"] == str(event.id).encode()
        assert record.key == event.subject.encode()
        assert record.timestamp == kafka_timestamp_ms(event)
        by_subject[event.subject].append((delivery.partition, delivery.offset))
    for coordinates in by_subject.values():
        assert len({partition for partition, _ in coordinates}) == 1, "one subject, one partition"
        assert coordinates == sorted(coordinates), "call order kept per subject"


async def test_large_and_small_shares_of_one_call_land_where_reported(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient, publisher: Publisher
) -> None:
    # two busy subjects (own batches) and a quiet one (the producer's shared batches)
    events = [cost(isolation.tenant_id, f"busy-{i % 2}", i) for i in range(4 * OWN_BATCH_MIN)]
    events[10:10] = [cost(isolation.tenant_id, "quiet", i) for i in range(3)]
    deliveries = await publisher.publish_many(events)
    await assert_landed_where_reported(stack, registry, events, deliveries)


async def test_full_batches_and_a_spent_budget_roll_over_without_gaps(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> None:
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    serializer = EventSerializer(CATALOG, registry, isolation.topic_prefix)
    events = [cost(isolation.tenant_id, "one-subject", i) for i in range(600)]
    async with Publisher(
        stack.endpoints.kafka_bootstrap,
        serializer,
        max_batch_bytes=8 << 10,  # ~20 records per batch
        max_in_flight_bytes=2 << 10,  # ~13 values: the budget cuts batches short too
    ) as small:
        peak = 0
        original = small.budget.try_acquire

        def watch(size: int) -> bool:
            nonlocal peak
            taken = original(size)
            peak = max(peak, small.budget.used)
            return taken

        small.budget.try_acquire = watch  # type: ignore[method-assign]
        deliveries = await small.publish_many(events)
        assert small.budget.used == 0
    assert 0 < peak <= 2 << 10
    offsets = [d.offset for d in deliveries]
    assert offsets == list(range(offsets[0], offsets[0] + len(events))), "no gap, no reorder"
    await assert_landed_where_reported(stack, registry, events, deliveries)


async def test_an_event_that_cannot_be_encoded_gives_its_budget_back(
    isolation: Isolation, publisher: Publisher
) -> None:
    events = [cost(isolation.tenant_id, "one-subject", i) for i in range(2 * OWN_BATCH_MIN)]
    stranger = build_event(
        CATALOG.get("webhook.deleted"),
        subject="one-subject",
        tenant_id=isolation.tenant_id,
        source="test",
        data={"webhook_id": "wh-1"},
    )
    # built without validation: says cost.recorded, carries another type's payload
    events[OWN_BATCH_MIN + 5] = Envelope.model_construct(
        **{**events[0].__dict__, "data": stranger.data}
    )
    with pytest.raises(TypeError, match=r"cost\.recorded carries CostRecorded"):
        await publisher.publish_many(events)
    await eventually(lambda: publisher.budget.used == 0)
    # and the publisher goes on
    assert len(await publisher.publish_many(events[:OWN_BATCH_MIN])) == OWN_BATCH_MIN
