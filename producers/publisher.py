"""Typed publishing: validate, encode, produce keyed by subject, confirm.

Delivery is at-least-once (acks=all, retries inside aiokafka; the embedded
broker has no idempotent producer), so consumers deduplicate by event id.
``publish_many`` is one call for a batch: every record is handed to the
producer before any confirmation is awaited, so the batch shares Kafka
requests; large calls write their own record batches (see ``publish_many``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from schemas.catalog import EventType
from schemas.models import Envelope
from schemas.serde import EventSerializer, KafkaRecord, kafka_timestamp_ms

PUBLISHED = Counter("ledgerbus_published_total", "Events confirmed by Kafka", ["type"])
PUBLISH_FAILED = Counter("ledgerbus_publish_failed_total", "Events Kafka refused", ["type"])
PUBLISH_SECONDS = Histogram(
    "ledgerbus_publish_seconds", "From publish call to confirmation of the whole batch"
)
IN_FLIGHT_BYTES = Gauge("ledgerbus_publish_in_flight_bytes", "Encoded bytes awaiting confirmation")

OWN_BATCH_MIN = 64
"""Records for one partition from which a call sends batches of its own."""
_PARTITIONER = DefaultPartitioner()  # what AIOKafkaProducer.send uses: murmur2 of the key


class PublishError(RuntimeError):
    """Kafka did not confirm an event after aiokafka's retries."""


class InvalidEvent(ValueError):
    """The event does not match its schema; nothing was published."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a confirmed event landed."""

    event_id: uuid.UUID
    type: str
    topic: str
    partition: int
    offset: int


class _Routing:
    """A ``publish_many`` call's events grouped by partition, as call indexes in call
    order, plus each event type's schema: no object per event, since every one
    would lengthen the garbage collector's walks for the rest of the call."""

    def __init__(self, events: Sequence[Envelope[Any]]) -> None:
        self.events = events
        self.types: dict[str, tuple[EventType, int]] = {}  # name -> (type, schema id)
        self.partitions: dict[TopicPartition, list[int]] = {}


@dataclass(frozen=True, slots=True)
class _Sent:
    """Records handed to the producer: the future confirming the first one's offset
    (one batch, or one record), and the call index of each, in offset order."""

    future: asyncio.Future[Any]
    indexes: list[int]


class _Batch:
    """A record batch being filled for one partition, and the budget bytes it holds."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.indexes: list[int] = []  # call index of each record, in offset order
        self.held = 0  # value bytes (an oversized one is alone, and release caps it)

    def append(self, index: int, record: KafkaRecord, timestamp_ms: int, size: int) -> bool:
        """Whether the record fit (a full batch takes nothing more)."""
        written = self.builder.append(
            timestamp=timestamp_ms, key=record.key, value=record.value, headers=record.headers
        )
        if written is None:
            return False
        self.indexes.append(index)
        self.held += size
        return True


class ByteBudget:
    """Bounds encoded-but-unconfirmed bytes: producers wait instead of growing memory.

    Single event loop, so plain counters suffice; ``release`` runs from Kafka
    confirmation callbacks.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while not self.try_acquire(size):
            self._freed.clear()
            await self._freed.wait()
        IN_FLIGHT_BYTES.set(self.used)

    def try_acquire(self, size: int) -> bool:
        """Take ``size`` bytes if that needs no wait (the gauge catches up on the next change)."""
        size = min(size, self.limit)  # one oversized record must still pass alone
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= min(size, self.limit)
        IN_FLIGHT_BYTES.set(self.used)
        self._freed.set()


class Publisher:
    """One producer per process, shared by every caller."""

    def __init__(
        self,
        bootstrap: str,
        serializer: EventSerializer,
        *,
        source: str = "ledgerbus",
        linger_ms: int = 5,
        max_batch_bytes: int = 1 << 20,
        max_in_flight_bytes: int = 64 << 20,
        request_timeout_ms: int = 30_000,
    ) -> None:
        self.serializer = serializer
        self.source = source
        self.budget = ByteBudget(max_in_flight_bytes)
        self._published: dict[str, Counter] = {}  # metric child per type: .labels() is slow
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=max_batch_bytes,
            max_request_size=max(max_batch_bytes, 1 << 20),
            request_timeout_ms=request_timeout_ms,
            enable_idempotence=False,
            client_id=f"ledgerbus-{source}",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, event: Envelope[Any]) -> Delivery:
        return (await self.publish_many([event]))[0]

    async def publish_many(self, events: Sequence[Envelope[Any]]) -> list[Delivery]:
        """Produce every event, then wait for all confirmations (order kept per subject).

        Large calls are routed to partitions here (the producer's own key
        hashing), and a partition's share of at least ``OWN_BATCH_MIN`` events
        is written straight into record batches of its own, sent whole: no
        per-record future, callback or accumulator lookup. Smaller shares, and
        small calls, join the producer's shared batches, so many small
        concurrent calls still coalesce. Either way a partition's records keep
        the call's order.
        """
        began = time.perf_counter()
        if len(events) < OWN_BATCH_MIN:  # no partition can fill a batch of its own
            sent = [await self._send_one(index, event) for index, event in enumerate(events)]
        else:
            sent = await self._submit_all(await self._route(events))
        deliveries = await self._confirm(events, sent)
        PUBLISH_SECONDS.observe(time.perf_counter() - began)
        return deliveries

    async def _route(self, events: Sequence[Envelope[Any]]) -> _Routing:
        """Events grouped by partition, in call order; encoding waits for ``_submit``."""
        serializer = self.serializer
        routing = _Routing(events)
        topics: dict[str, tuple[str, list[int]]] = {}  # type -> (topic, its partitions)
        indexes_of: dict[tuple[str, str], list[int]] = {}  # by (topic, subject)
        for index, event in enumerate(events):
            known = topics.get(event.type)
            if known is None:
                event_type = serializer.catalog.get(event.type)
                topic = serializer.topic(event_type)
                known = topics[event.type] = (
                    topic,
                    sorted(await self._producer.partitions_for(topic)),
                )
                schema_id = await serializer.schema_id(event_type)
                routing.types[event.type] = (event_type, schema_id)
            topic, all_partitions = known
            indexes = indexes_of.get((topic, event.subject))
            if indexes is None:
                partition = _PARTITIONER(event.subject.encode(), all_partitions, all_partitions)
                indexes = routing.partitions.setdefault(TopicPartition(topic, partition), [])
                indexes_of[topic, event.subject] = indexes
            indexes.append(index)
        return routing

    async def _submit_all(self, routing: _Routing) -> list[_Sent]:
        """Every partition's records, partitions concurrently (one needs no task)."""
        if len(routing.partitions) == 1:
            ((tp, indexes),) = routing.partitions.items()
            return await self._submit(routing, tp, indexes)
        submitted = await asyncio.gather(
            *(self._submit(routing, tp, indexes) for tp, indexes in routing.partitions.items()),
            return_exceptions=True,
        )
        sent: list[_Sent] = []
        for outcome in submitted:
            if isinstance(outcome, BaseException):
                raise outcome
            sent += outcome
        return sent

    async def _submit(
        self, routing: _Routing, tp: TopicPartition, indexes: list[int]
    ) -> list[_Sent]:
        """Encode and hand one partition's records to the producer; confirmations come later.

        Encoding happens here, record by record, each within the byte budget:
        when the budget is spent, the batch in hand is sent before waiting, so
        the wait ends as soon as earlier batches are confirmed.
        """
        events, types = routing.events, routing.types
        if len(indexes) < OWN_BATCH_MIN:
            return [await self._send_one(i, events[i], tp.partition) for i in indexes]
        record_of = self.serializer.record
        budget = self.budget
        sent: list[_Sent] = []
        batch = _Batch(self._producer.create_batch())
        try:
            for index in indexes:
                event = events[index]
                record = record_of(*types[event.type], event)
                size = len(record.value)
                timestamp_ms = kafka_timestamp_ms(event)
                acquired = budget.try_acquire(size)
                if acquired and batch.append(index, record, timestamp_ms, size):
                    continue
                if batch.indexes:  # full, or the budget is spent: send what we hold first
                    sent.append(await self._send_batch(tp, batch))
                    batch = _Batch(self._producer.create_batch())
                if not acquired:
                    await budget.acquire(size)
                batch.append(index, record, timestamp_ms, size)  # an empty batch takes any
            sent.append(await self._send_batch(tp, batch))
        except BaseException:
            budget.release(batch.held)  # the batch in hand never reached the producer
            raise
        return sent

    async def _send_batch(self, tp: TopicPartition, batch: _Batch) -> _Sent:
        """Hand a batch over; its budget bytes come back once Kafka has answered."""
        batch.builder.close()  # complete: the sender takes it without lingering
        IN_FLIGHT_BYTES.set(self.budget.used)
        future = await self._producer.send_batch(batch.builder, tp.topic, partition=tp.partition)
        held = batch.held
        future.add_done_callback(lambda _: self.budget.release(held))
        return _Sent(future, batch.indexes)

    async def _send_one(
        self, index: int, event: Envelope[Any], partition: int | None = None
    ) -> _Sent:
        """One record into the producer's shared batches (``partition`` None: by key)."""
        record = await self.serializer.serialize(event)
        size = len(record.value)
        await self.budget.acquire(size)
        try:
            future = await self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                partition=partition,
                headers=record.headers,
                timestamp_ms=kafka_timestamp_ms(event),
            )
        except BaseException:
            self.budget.release(size)
            raise
        future.add_done_callback(lambda _: self.budget.release(size))
        return _Sent(future, [index])

    async def _confirm(self, events: Sequence[Envelope[Any]], sent: list[_Sent]) -> list[Delivery]:
        """Deliveries in call order; the first unconfirmed event raises ``PublishError``."""
        deliveries: list[Delivery | None] = [None] * len(events)
        failures: dict[int, BaseException] = {}
        confirmed: collections.Counter[str] = collections.Counter()
        for batch in sent:
            try:
                metadata = await batch.future
            except KafkaError as exc:
                failures.update((index, exc) for index in batch.indexes)
                continue
            topic, partition = metadata.topic, metadata.partition
            for offset, index in enumerate(batch.indexes, metadata.offset):
                event = events[index]
                deliveries[index] = Delivery(event.id, event.type, topic, partition, offset)
                confirmed[event.type] += 1
        for event_type, count in confirmed.items():
            self._published_counter(event_type).inc(count)
        if failures:
            for index in failures:
                PUBLISH_FAILED.labels(events[index].type).inc()
            first = min(failures)
            event, error = events[first], failures[first]
            raise PublishError(f"{event.type} {event.id} was not confirmed: {error!r}") from error
        return cast("list[Delivery]", deliveries)

    def _published_counter(self, event_type: str) -> Counter:
        published = self._published.get(event_type)
        if published is None:
            published = self._published[event_type] = PUBLISHED.labels(event_type)
        return published


def build_event(
    event_type: EventType,
    *,
    subject: str,
    tenant_id: str,
    data: Mapping[str, Any],
    source: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: uuid.UUID | None = None,
    time: datetime | None = None,
) -> Envelope[Any]:
    """A new event from plain values, validated against its type's model.

    ``event_id`` fixes the id (default: a random one), so a caller that redoes
    a step publishes the same event again and consumers deduplicate it.
    ``time`` (default: now) lets a caller bind the time into the data first,
    as sealed boxes do.
    """
    try:
        return event_type.from_record(
            {
                "id": random_uuid() if event_id is None else event_id,
                "type": event_type.name,
                "source": source,
                "subject": subject,
                "tenant_id": tenant_id,
                "time": datetime.now(UTC) if time is None else time,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "data": data,
            }
        )
    except ValidationError as exc:
        raise InvalidEvent(_describe(event_type.name, exc)) from exc


def random_uuid() -> str:
    """A version 4 UUID, as text: what ``uuid.uuid4()`` holds, for a third of its cost
    (building the ``UUID`` object is most of it; the model parses the text natively)."""
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}  # RFC 4122


def _describe(event_type: str, error: ValidationError) -> str:
    """One line per problem, with the field path, as the CLI and the API show it."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(event)"
        problems.append(f"{path}: {item['msg']}")
    return f"invalid {event_type}: " + "; ".join(problems)
