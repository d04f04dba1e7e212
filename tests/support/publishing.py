"""Publishing over HTTP in tests: request bodies, and what really reached the topics.

"Nothing was published" is checked by reading every topic of the test's prefix
up to the fetch high watermarks (the embedded broker's ``end_offsets()`` is
wrong, see SPEC.md known limits), so a stray record anywhere is seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from gateway.services import GatewayEndpoints
from schemas.models import Envelope
from schemas.topics import TOPICS, physical_name
from tests.conftest import Isolation, StackUnderTest
from tests.support.archive import PAYLOADS
from tests.support.gateway import RunningGateway


def event_body(
    event_type: str = "cost.recorded", subject: str = "run-1", **data: Any
) -> dict[str, Any]:
    """A valid ``POST /v1/events`` body for one of the types in ``PAYLOADS``; ``data``
    overrides payload fields."""
    return {"type": event_type, "subject": subject, "data": {**PAYLOADS[event_type], **data}}


async def records_on(
    gateway: RunningGateway, topics: Iterable[str] = TOPICS, timeout: float = 20.0
) -> list[ConsumerRecord]:
    """Every record now on these logical topics of the gateway's prefix, all partitions."""
    endpoints = gateway.services.endpoints
    partitions = [
        TopicPartition(physical_name(topic, endpoints.topic_prefix), partition)
        for topic in topics
        for partition in range(TOPICS[topic].partitions)
    ]
    reader = AIOKafkaConsumer(bootstrap_servers=endpoints.kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    records: list[ConsumerRecord] = []
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        async with asyncio.timeout(timeout):
            while not await _read_to_end(reader, partitions):
                for batch in (await reader.getmany(timeout_ms=100)).values():
                    records.extend(batch)
    finally:
        await reader.stop()
    return records


async def _read_to_end(reader: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = reader.highwater(tp)
        if highwater is None or await reader.position(tp) < highwater:
            return False
    return True


async def decoded(
    gateway: RunningGateway, records: Iterable[ConsumerRecord]
) -> list[Envelope[Any]]:
    return [await gateway.services.deserializer.deserialize(record.value) for record in records]


def at(records: Iterable[ConsumerRecord], answer: dict[str, Any]) -> ConsumerRecord:
    """The record at the topic, partition and offset a 202 answer names."""
    (found,) = [
        record
        for record in records
        if (record.topic, record.partition, record.offset)
        == (answer["topic"], answer["partition"], answer["offset"])
    ]
    return found


def endpoints_for(
    stack: StackUnderTest, isolation: Isolation, registry_url: str, **overrides: str
) -> GatewayEndpoints:
    """The test's private endpoints, as the ``gateway`` fixture uses them; ``overrides``
    replace some (e.g. a ``redis_url`` nobody answers on)."""
    endpoints = GatewayEndpoints(
        kafka_bootstrap=stack.endpoints.kafka_bootstrap,
        database_url=isolation.database_url,
        redis_url=stack.endpoints.redis_url,
        schema_registry_url=registry_url,
        topic_prefix=isolation.topic_prefix,
    )
    return dataclasses.replace(endpoints, **overrides)
