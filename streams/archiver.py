"""The archiver: every event that enters Kafka goes into the event store, once.

One poll batch becomes one ``EventStore.append`` (one transaction); the
consumer runtime commits the batch's offsets only after ``handle_batches``
returns, so Kafka never moves past an event PostgreSQL does not hold. A crash
between the database commit and the offset commit re-delivers the batch, and
``append`` drops what it already stored (dedup by event id), so nothing is
stored or chained twice. Transient database errors are retried in place;
any other error ends the process with nothing committed, and its supervisor
restarts it.

Records are decoded with ``EventDeserializer.read`` (Avro only, no pydantic):
the archiver needs the envelope attributes and the canonical bytes, not a
validated payload, and at ingest rates model validation would dominate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import Counter, Histogram

from consumers.dead_letters import DeadLetters
from consumers.runtime import ConsumerConfig, ConsumerLoop
from event_store.errors import TRANSIENT_ERRORS
from event_store.store import AppendResult, EventStore, NewEvent
from schemas.serde import DecodeError, EventDeserializer, RawEvent
from schemas.topics import TOPICS, physical_name

log = logging.getLogger(__name__)

ARCHIVED = Counter("ledgerbus_archived_total", "Events appended to the event store", ["group"])
DUPLICATES = Counter(
    "ledgerbus_archive_duplicates_total", "Re-delivered events the store already held", ["group"]
)
APPEND_RETRIES = Counter(
    "ledgerbus_archive_append_retries_total", "Appends retried after a database error", ["group"]
)
APPEND_SECONDS = Histogram(
    "ledgerbus_archive_append_seconds", "One batch's append transaction", ["group"]
)
BATCH_EVENTS = Histogram(
    "ledgerbus_archive_batch_events",
    "Events per appended batch",
    ["group"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)

OnAppended = Callable[[AppendResult], Awaitable[None]]


class InvalidEnvelope(DecodeError):
    """Avro that decodes but cannot be archived as it stands (e.g. an empty tenant id)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_envelope", message)


def archive_topics(prefix: str = "") -> list[str]:
    """Every event topic of a deployment; dead-letter topics are not archived."""
    return [physical_name(topic, prefix) for topic in TOPICS.values()]


def to_new_event(raw: RawEvent, record: ConsumerRecord) -> NewEvent:
    """The archivable event in ``raw``, read from the Kafka record ``record``.

    The decoder already typed the envelope (``id`` a UUID, ``time`` an aware
    datetime); what is left to check is what PostgreSQL or the chain would
    choke on or get wrong: a type that is not the schema's, an empty tenant or
    subject, NUL in text (PostgreSQL ``text`` cannot hold it, and a row that
    can never be written would stall the archive behind it).
    """
    fields = raw.record
    name = raw.event_type.name
    tenant, subject = fields["tenant_id"], fields["subject"]
    correlation, causation = fields["correlation_id"], fields["causation_id"]
    if fields["type"] != name:
        raise InvalidEnvelope(f"type {fields['type']!r} does not match the schema's {name!r}")
    if not tenant or not subject:
        raise InvalidEnvelope("tenant_id and subject must not be empty")
    if "\x00" in f"{tenant}{subject}{correlation}{causation}":
        raise InvalidEnvelope("tenant_id, subject, correlation_id, causation_id: NUL in text")
    return NewEvent(
        event_id=fields["id"],
        tenant_id=tenant,
        type=name,
        subject=subject,
        time=fields["time"],
        schema_id=raw.schema_id,
        body=raw.body,
        correlation_id=correlation,
        causation_id=causation,
        kafka_topic=record.topic,
        kafka_partition=record.partition,
        kafka_offset=record.offset,
    )


class Archiver(ConsumerLoop):
    """Consumes every event topic and appends each poll batch to the event store."""

    def __init__(
        self,
        config: ConsumerConfig,
        deserializer: EventDeserializer,
        store: EventStore,
        dead_letters: DeadLetters,
        *,
        on_appended: OnAppended | None = None,
    ) -> None:
        super().__init__(config, dead_letters)
        self.deserializer = deserializer
        self.store = store
        self.on_appended = on_appended
        self.archived = 0  # totals since start, for progress lines and tests
        self.duplicates = 0

    async def handle_batches(self, batches: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        events: list[NewEvent] = []
        for records in batches.values():
            for record in records:
                try:
                    raw = await self.deserializer.read(record.value)
                    events.append(to_new_event(raw, record))
                except DecodeError as exc:  # InvalidEnvelope included
                    await self.dead_letter(record, exc.reason, str(exc))
        if events:
            result = await self._append(events)
            if self.on_appended is not None:
                await self.on_appended(result)

    async def _append(self, events: list[NewEvent]) -> AppendResult:
        """Append, retrying transient database errors for as long as they last:
        skipping would let the offset commit pass events that were never stored."""
        group = self.config.group_id
        attempt = 0
        while True:
            began = time.perf_counter()
            try:
                result = await self.store.append(events)
            except TRANSIENT_ERRORS as exc:
                APPEND_RETRIES.labels(group).inc()
                delay = self.config.retry.delay(min(attempt, 16))
                log.warning(
                    "append of %d events failed (%r); retry in %.2fs", len(events), exc, delay
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue
            APPEND_SECONDS.labels(group).observe(time.perf_counter() - began)
            BATCH_EVENTS.labels(group).observe(len(events))
            ARCHIVED.labels(group).inc(result.appended)
            DUPLICATES.labels(group).inc(result.duplicates)
            self.archived += result.appended
            self.duplicates += result.duplicates
            return result
