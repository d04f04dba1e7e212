"""Follow topics without a consumer group: every partition, decoded, filtered.

For people and tools watching the bus (``ledgerbus tail``): no offsets are
committed and nobody else's share of the work is taken. "From now" is decided
by record timestamps, because the embedded broker's ``end_offsets()`` is wrong
(SPEC.md, known limits).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.models import Envelope
from schemas.serde import DecodeError, EventDeserializer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventFilter:
    """Type globs (``agent.*``), subject and tenant; empty means everything."""

    types: Sequence[str] = ()
    subject: str | None = None
    tenant_id: str | None = None

    def matches(self, event: Envelope[Any]) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(event.type, glob) for glob in self.types):
            return False
        if self.subject is not None and event.subject != self.subject:
            return False
        return self.tenant_id is None or event.tenant_id == self.tenant_id


async def follow(
    bootstrap: str,
    topics: Sequence[str],
    deserializer: EventDeserializer,
    event_filter: EventFilter,
    *,
    from_beginning: bool = False,
) -> AsyncIterator[Envelope[Any]]:
    """Yield matching events as they arrive, forever (cancel to stop)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata for every topic
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        since_ms = 0 if from_beginning else int(time.time() * 1000)
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.timestamp < since_ms:
                        continue
                    try:
                        event = await deserializer.deserialize(record.value)
                    except DecodeError as exc:
                        log.warning(
                            "skipping %s:%d@%d: %s",
                            record.topic,
                            record.partition,
                            record.offset,
                            exc,
                        )
                        continue
                    if event_filter.matches(event):
                        yield event
    finally:
        await consumer.stop()
