"""Publisher, consumer runtime and dead letters on the real embedded stack."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from fastavro import schemaless_writer

from consumers.dead_letters import DeadLetters
from consumers.runtime import (
    ConsumerConfig,
    EventConsumer,
    Handler,
    PermanentError,
    RetryPolicy,
)
from producers.publisher import InvalidEvent, Publisher, build_event
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from tests.conftest import Isolation, StackUnderTest
from tests.support.costs import cost_event
from tests.support.kafka import SESSION_TIMEOUT_MS, read_all

CATALOG = default_catalog()
COSTS = CATALOG.get("cost.recorded")


@pytest.fixture
async def raw_producer(stack: StackUnderTest) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=stack.endpoints.kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


def costs_topic(isolation: Isolation) -> str:
    return f"{isolation.topic_prefix}ledgerbus.costs"


def schema_invalid(event: Envelope[Any], schema_id: int, **data: Any) -> bytes:
    """``event`` framed with ``schema_id``, with ``data`` fields the model refuses:
    valid Avro that only validation catches."""
    event_type = CATALOG.get(event.type)
    record = event_type.to_record(event)
    record["data"].update(data)
    buffer = io.BytesIO()
    buffer.write(b"\x00" + struct.pack(">I", schema_id))
    schemaless_writer(buffer, event_type.parsed_schema, record)
    return buffer.getvalue()


def new_consumer(
    stack: StackUnderTest,
    registry: RegistryClient,
    topic: str,
    handlers: dict[str, Handler],
    dead_letters: AIOKafkaProducer,
    **config: Any,
) -> EventConsumer:
    """A consumer of ``topic`` in a group of its own, dead-lettering with ``dead_letters``."""
    group = f"g-{uuid.uuid4()}"
    return EventConsumer(
        ConsumerConfig(
            stack.endpoints.kafka_bootstrap,
            group,
            [topic],
            session_timeout_ms=SESSION_TIMEOUT_MS,
            **config,
        ),
        EventDeserializer(CATALOG, registry),
        handlers,
        DeadLetters(dead_letters, group),
    )


async def consume_until(
    consumer: EventConsumer, done: asyncio.Event, timeout: float = 30.0
) -> None:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        consumer.request_stop()
        await task
        await consumer.stop()


async def test_publish_returns_coordinates_and_headers(
    stack: StackUnderTest, isolation: Isolation, publisher: Publisher
) -> None:
    event = cost_event(isolation.tenant_id, "run-1", 1)
    delivery = await publisher.publish(event)
    assert delivery.topic == costs_topic(isolation)
    assert delivery.event_id == event.id
    assert delivery.offset >= 0
    (record,) = await read_all(stack.endpoints.kafka_bootstrap, delivery.topic, 1)
    assert (record.partition, record.offset) == (delivery.partition, delivery.offset)
    assert record.key == b"run-1"
    headers = dict(record.headers)
    assert headers["ce_id"] == str(event.id).encode()
    assert headers["ce_type"] == b"cost.recorded"
    assert headers["ce_source"] == b"test"
    assert headers["ce_subject"] == b"run-1"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ledgerbus-tenant"] == isolation.tenant_id.encode()
    assert headers["content-type"] == b"application/avro"
    assert record.value[0] == 0, "Confluent magic byte"


async def test_invalid_event_is_refused_before_kafka(isolation: Isolation) -> None:
    with pytest.raises(InvalidEvent, match=r"data\.cost_micros"):
        build_event(
            COSTS,
            subject="s",
            tenant_id=isolation.tenant_id,
            source="t",
            data={**cost_event("t", "s", 1).data.model_dump(), "cost_micros": "lots"},
        )


async def test_order_per_subject_under_concurrency(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    registry: RegistryClient,
    raw_producer: AIOKafkaProducer,
) -> None:
    subjects = [f"run-{i}" for i in range(8)]
    events = [cost_event(isolation.tenant_id, s, seq) for seq in range(60) for s in subjects]
    deliveries = await publisher.publish_many(events)
    assert len(deliveries) == len(events)

    seen: dict[str, list[int]] = defaultdict(list)
    done = asyncio.Event()

    async def handle(event: Envelope[Any]) -> None:
        await asyncio.sleep(random.random() / 500)  # interleave subjects
        seen[event.subject].append(event.data.input_tokens)
        if sum(map(len, seen.values())) == len(events):
            done.set()

    consumer = new_consumer(
        stack,
        registry,
        costs_topic(isolation),
        {"cost.recorded": handle},
        raw_producer,
        max_concurrency=16,
    )
    await consume_until(consumer, done)
    assert {s: seen[s] for s in subjects} == {s: list(range(60)) for s in subjects}


async def test_poison_messages_go_to_dead_letters_and_consumer_goes_on(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    registry: RegistryClient,
    raw_producer: AIOKafkaProducer,
) -> None:
    topic = costs_topic(isolation)
    good = cost_event(isolation.tenant_id, "same-key", 1)
    framed = (await publisher.serializer.serialize(good)).value
    schema_id = struct.unpack(">I", framed[1:5])[0]
    poison = {
        "not_confluent_framed": b'{"json": true}',
        "unknown_schema_id": b"\x00" + struct.pack(">I", 987654) + framed[5:],
        "undecodable_avro": framed[:5] + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    }
    for value in poison.values():
        await raw_producer.send_and_wait(topic, value=value, key=b"same-key")
    # valid Avro that the model refuses: negative money
    negative = cost_event(isolation.tenant_id, "same-key", 2)
    value = schema_invalid(negative, schema_id, cost_micros=-5)
    await raw_producer.send_and_wait(topic, value=value, key=b"same-key")
    gives_up = cost_event(isolation.tenant_id, "same-key", 3)
    rejected = cost_event(isolation.tenant_id, "same-key", 4)
    last = cost_event(isolation.tenant_id, "same-key", 5)
    await publisher.publish_many([gives_up, rejected, last])

    handled: list[int] = []
    attempts: dict[int, int] = defaultdict(int)
    done = asyncio.Event()

    async def handle(event: Envelope[Any]) -> None:
        seq = event.data.input_tokens
        attempts[seq] += 1
        if seq == 3:
            raise ConnectionError("downstream is down")
        if seq == 4:
            raise PermanentError("never valid")
        handled.append(seq)
        if seq == 5:
            done.set()

    consumer = new_consumer(
        stack,
        registry,
        topic,
        {"cost.recorded": handle},
        raw_producer,
        retry=RetryPolicy(attempts=3, initial_backoff=0.01),
    )
    await consume_until(consumer, done)
    assert handled == [5]
    assert attempts[3] == 3 and attempts[4] == 1

    dead = await read_all(stack.endpoints.kafka_bootstrap, f"{topic}.dlq", 6)
    reasons = [dict(r.headers)["ledgerbus-dlq-reason"].decode() for r in dead]
    assert reasons == [
        "not_confluent_framed",
        "unknown_schema_id",
        "undecodable_avro",
        "schema_violation",
        "handler_gave_up",
        "handler_rejected",
    ]
    assert dead[0].value == poison["not_confluent_framed"], "original bytes kept"
    headers = dict(dead[4].headers)
    assert headers["ledgerbus-dlq-topic"] == topic.encode()
    assert b"downstream is down" in headers["ledgerbus-dlq-error"]
    assert headers["ce_id"] == str(gives_up.id).encode(), "original headers kept"


async def test_records_no_handler_wants_are_skipped_undecoded(
    stack: StackUnderTest,
    isolation: Isolation,
    publisher: Publisher,
    registry: RegistryClient,
    raw_producer: AIOKafkaProducer,
) -> None:
    """A consumer of budget.set reads past cost.recorded records, even invalid
    ones, without decoding them: those are another consumer's to dead-letter."""
    topic = costs_topic(isolation)
    serializer = publisher.serializer
    budget = build_event(
        CATALOG.get("budget.set"),
        subject="k",
        tenant_id=isolation.tenant_id,
        source="test",
        data={"project_id": "proj-1", "amount_micros": 1_000},
    )
    budget_id = await serializer.schema_id(CATALOG.get("budget.set"))
    cost = cost_event(isolation.tenant_id, "k", 1)
    cost_id = await serializer.schema_id(COSTS)
    values = [
        (await serializer.serialize(cost)).value,  # teaches the consumer the schema id
        schema_invalid(cost, cost_id, cost_micros=-1),  # skipped: no cost.recorded handler
        schema_invalid(budget, budget_id, amount_micros=-1),  # dead-lettered
        (await serializer.serialize(budget)).value,
    ]
    for value in values:
        await raw_producer.send_and_wait(topic, value=value, key=b"k")

    handled: list[Envelope[Any]] = []
    done = asyncio.Event()

    async def handle(event: Envelope[Any]) -> None:
        handled.append(event)
        done.set()

    consumer = new_consumer(stack, registry, topic, {"budget.set": handle}, raw_producer)
    await consume_until(consumer, done)
    assert [e.id for e in handled] == [budget.id]
    # one key, one partition: a dead-lettered cost record would come first
    (first, *_) = await read_all(stack.endpoints.kafka_bootstrap, f"{topic}.dlq", 1)
    assert first.value == values[2]
    assert dict(first.headers)["ledgerbus-dlq-reason"] == b"schema_violation"


async def test_batch_publish_backpressure_bounds_memory(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> None:
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    serializer = EventSerializer(CATALOG, registry, isolation.topic_prefix)
    async with Publisher(
        stack.endpoints.kafka_bootstrap, serializer, max_in_flight_bytes=4096
    ) as small:
        peak = 0
        original = small.budget.acquire

        async def watch(size: int) -> None:
            nonlocal peak
            await original(size)
            peak = max(peak, small.budget.used)

        small.budget.acquire = watch  # type: ignore[method-assign]
        events = [cost_event(isolation.tenant_id, f"s{i % 5}", i) for i in range(500)]
        deliveries = await small.publish_many(events)
    assert len({(d.partition, d.offset) for d in deliveries}) == 500
    assert peak <= 4096
    assert small.budget.used == 0


async def test_one_subject_lands_on_one_partition_in_order(
    isolation: Isolation, publisher: Publisher
) -> None:
    deliveries = await publisher.publish_many(
        [cost_event(isolation.tenant_id, "k", i) for i in range(10)]
    )
    assert len({(d.topic, d.partition) for d in deliveries}) == 1, "one subject, one partition"
    offsets = [d.offset for d in deliveries]
    assert offsets == sorted(offsets) and len(set(offsets)) == 10
