"""A consumer in its own OS process, for kill -9 tests.

Usage: python -m tests.support.consumer_proc BOOTSTRAP REGISTRY_URL DATABASE_URL TOPIC GROUP

Every handled event is recorded (event id, partition, offset, pid) in the
``handled`` table, committed before the handler returns; the handler is slow
on purpose so a kill lands mid-batch.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig, EventConsumer
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer
from tests.support.kafka import SESSION_TIMEOUT_MS


async def main(
    bootstrap: str, registry_url: str, database_url: str, topic: str, group: str
) -> None:
    db = await asyncpg.connect(database_url)
    registry = RegistryClient(registry_url)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()

    async def record(event: Envelope[Any]) -> None:
        await asyncio.sleep(0.002)
        await db.execute(
            "INSERT INTO handled (event_id, seq, pid) VALUES ($1, $2, $3)",
            str(event.id),
            event.data.input_tokens,
            os.getpid(),
        )

    consumer = EventConsumer(
        ConsumerConfig(
            bootstrap, group, [topic], max_poll_records=50, session_timeout_ms=SESSION_TIMEOUT_MS
        ),
        EventDeserializer(default_catalog(), registry),
        {"cost.recorded": record},
        DeadLetters(producer, group),
    )
    await consumer.start()
    print("consuming", flush=True)
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
