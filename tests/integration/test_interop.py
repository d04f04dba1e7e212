"""Interop with a client no one here wrote: confluent-kafka's Avro serde and registry client.

librdkafka's consumer-group join hangs on the embedded broker, so the
confluent consumer uses ``assign()`` (SPEC.md, known limits). confluent's
clients are synchronous: they run in threads, because the registry under test
is served from this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from producers.publisher import Publisher
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from tests.conftest import Isolation, StackUnderTest
from tests.integration.test_bus import consume_until, new_consumer
from tests.support.costs import cost_event

CATALOG = default_catalog()
COSTS = CATALOG.get("cost.recorded")


def confluent_read(bootstrap: str, registry_url: str, topic: str, partition: int) -> Any:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"cf-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    try:
        for _ in range(100):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        else:
            raise AssertionError("confluent consumer received nothing")
    finally:
        consumer.close()
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    return deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))


async def test_confluent_deserializer_reads_ledgerbus_events(
    stack: StackUnderTest, isolation: Isolation, publisher: Publisher, registry_url: str
) -> None:
    event = cost_event(isolation.tenant_id, "run-interop", 42, cost=1234)
    delivery = await publisher.publish(event)
    decoded = await asyncio.to_thread(
        confluent_read,
        stack.endpoints.kafka_bootstrap,
        registry_url,
        delivery.topic,
        delivery.partition,
    )
    assert str(decoded["id"]) == str(event.id)
    assert decoded["type"] == "cost.recorded"
    assert decoded["tenant_id"] == isolation.tenant_id
    assert decoded["time"] == event.time
    assert decoded["data"]["cost_micros"] == 1234
    assert decoded["data"]["input_tokens"] == 42


def confluent_produce(
    bootstrap: str, registry_url: str, topic: str, record: dict[str, Any]
) -> None:
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": registry_url}),
        json.dumps(COSTS.schema),
        conf={"subject.name.strategy": record_subject_name_strategy},
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        topic,
        key=record["subject"].encode(),
        value=serializer(record, SerializationContext(topic, MessageField.VALUE)),
    )
    assert producer.flush(10) == 0


async def test_ledgerbus_consumes_a_confluent_serialized_event(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient, registry_url: str
) -> None:
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    topic = f"{isolation.topic_prefix}ledgerbus.costs"
    event = cost_event(isolation.tenant_id, "run-from-confluent", 7, cost=99)
    await asyncio.to_thread(
        confluent_produce,
        stack.endpoints.kafka_bootstrap,
        registry_url,
        topic,
        COSTS.to_record(event),
    )
    received: list[Envelope[Any]] = []
    done = asyncio.Event()

    async def handle(incoming: Envelope[Any]) -> None:
        received.append(incoming)
        done.set()

    producer = AIOKafkaProducer(bootstrap_servers=stack.endpoints.kafka_bootstrap)
    await producer.start()
    try:
        consumer = new_consumer(stack, registry, topic, {"cost.recorded": handle}, producer)
        await consume_until(consumer, done)
    finally:
        await producer.stop()
    assert received == [event]
