"""Publisher and consumer throughput vs raw aiokafka on the same embedded broker.

Baselines in the same run: raw ``AIOKafkaProducer.send`` of pre-encoded bytes
with the same acks/linger/batch settings, and raw ``getmany`` over the same
records. Prints figures; asserts only counts. ``make bench``.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig, EventConsumer
from producers.publisher import Publisher, build_event
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from tests.conftest import Isolation, StackUnderTest

N = 50_000
COST_MICROS = 540
COSTS = default_catalog().get("cost.recorded")
DATA = {
    "run_id": "run-1",
    "project_id": "proj-website",
    "agent_name": "developer",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_tokens": 1200,
    "output_tokens": 300,
    "cost_micros": COST_MICROS,
    "latency_ms": 812,
}


def events(tenant: str) -> list[dict[str, Any]]:
    return [{"subject": f"run-{i % 64}", "tenant": tenant} for i in range(N)]


async def test_publisher_and_consumer_vs_raw_aiokafka(
    stack: StackUnderTest, isolation: Isolation, registry: RegistryClient
) -> None:
    bootstrap = stack.endpoints.kafka_bootstrap
    await ensure_topics(bootstrap, isolation.topic_prefix)
    topic = f"{isolation.topic_prefix}ledgerbus.costs"
    serializer = EventSerializer(default_catalog(), registry, isolation.topic_prefix)
    specs = events(isolation.tenant_id)

    # ledgerbus: validate (build_event) + encode + produce + confirm
    async with Publisher(bootstrap, serializer, linger_ms=5) as publisher:
        await publisher.publish(
            build_event(COSTS, subject="warm", tenant_id="t", data=DATA, source="bench")
        )
        began = time.perf_counter()
        batch = [
            build_event(
                COSTS, subject=s["subject"], tenant_id=s["tenant"], data=DATA, source="bench"
            )
            for s in specs
        ]
        deliveries = await publisher.publish_many(batch)
        ours = time.perf_counter() - began
    assert len(deliveries) == N
    encoded = [(await serializer.serialize(e)) for e in batch]

    # baseline: raw aiokafka, pre-encoded bytes, same settings
    raw = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=1 << 20,
        enable_idempotence=False,
    )
    await raw.start()
    try:
        began = time.perf_counter()
        futures = [
            await raw.send(r.topic, value=r.value, key=r.key, headers=r.headers) for r in encoded
        ]
        await asyncio.gather(*futures)
        baseline = time.perf_counter() - began
    finally:
        await raw.stop()

    print(f"\npublish {N} events ({len(encoded[0].value)} B Avro):")
    print(f"  raw aiokafka send (pre-encoded) {N / baseline:>10,.0f}/s")
    print(
        f"  ledgerbus Publisher (validate+encode+send+confirm) {N / ours:>10,.0f}/s"
        f"  = {baseline / ours:.2f}x"
    )

    # consumers over the 2N+1 records now in the topic; the publisher's 100k
    # objects would otherwise make every full GC below scan them
    values = [r.value for r in encoded]
    del batch, encoded, deliveries
    gc.collect()
    total = 2 * N + 1
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        max_poll_records=1000,
    )
    await reader.start()
    seen = 0
    began = time.perf_counter()
    while seen < total:
        for records in (await reader.getmany(timeout_ms=200)).values():
            seen += len(records)
    raw_consume = time.perf_counter() - began
    await reader.stop()

    handled = 0
    cost_micros = 0
    done = asyncio.Event()

    async def handle(event: Envelope[Any]) -> None:
        nonlocal handled, cost_micros
        cost_micros += event.data.cost_micros  # a real handler reads its payload
        handled += 1
        if handled == total:
            done.set()

    dead = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await dead.start()
    deserializer = EventDeserializer(default_catalog(), registry)
    await deserializer.deserialize(values[0])  # warm, as the publisher was: schema fetched
    consumer = EventConsumer(
        ConsumerConfig(bootstrap, f"bench-{uuid.uuid4()}", [topic]),
        deserializer,
        {"cost.recorded": handle},
        DeadLetters(dead, "bench"),
    )
    await consumer.start()
    began = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(done.wait(), 300)
    ours_consume = time.perf_counter() - began
    consumer.request_stop()
    await task
    await consumer.stop()
    await dead.stop()

    # where a record's time goes, in this run: the floor under our figure
    began = time.perf_counter()
    for value in values:
        deserializer.deserialize_cached(value)
    decode_validate = (time.perf_counter() - began) / len(values)
    print(f"consume {total} events:")
    print(f"  raw aiokafka getmany                 {total / raw_consume:>10,.0f}/s")
    print(
        f"  ledgerbus EventConsumer (decode+dispatch+commit) {total / ours_consume:>10,.0f}/s"
        f"  = {raw_consume / ours_consume:.2f}x"
    )
    print(
        f"  per record: raw fetch {raw_consume / total * 1e6:.2f} us, ours"
        f" {ours_consume / total * 1e6:.2f} us, of which Avro decode + pydantic validation"
        f" {decode_validate * 1e6:.2f} us"
    )
    assert handled == total
    assert cost_micros == total * COST_MICROS
