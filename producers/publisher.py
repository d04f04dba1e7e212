"""Typed publishing: validate, encode, produce keyed by subject, confirm.

Delivery is at-least-once (acks=all, retries inside aiokafka; the embedded
broker has no idempotent producer), so consumers deduplicate by event id.
``publish_many`` is one call for a batch: every record is handed to the
producer's accumulator before any confirmation is awaited, so the batch shares
Kafka requests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from schemas.catalog import EventType
from schemas.models import Envelope
from schemas.serde import EventSerializer, kafka_timestamp_ms

PUBLISHED = Counter("ledgerbus_published_total", "Events confirmed by Kafka", ["type"])
PUBLISH_FAILED = Counter("ledgerbus_publish_failed_total", "Events Kafka refused", ["type"])
PUBLISH_SECONDS = Histogram(
    "ledgerbus_publish_seconds", "From publish call to confirmation of the whole batch"
)
IN_FLIGHT_BYTES = Gauge("ledgerbus_publish_in_flight_bytes", "Encoded bytes awaiting confirmation")


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
        size = min(size, self.limit)  # one oversized record must still pass alone
        while self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size
        IN_FLIGHT_BYTES.set(self.used)

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
        """Produce every event, then wait for all confirmations (order kept per subject)."""
        began = time.perf_counter()
        pending: list[tuple[Envelope[Any], asyncio.Future[Any]]] = []
        for event in events:
            record = await self.serializer.serialize(event)
            size = len(record.value)
            await self.budget.acquire(size)
            try:
                future = await self._producer.send(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    timestamp_ms=kafka_timestamp_ms(event),
                )
            except BaseException:
                self.budget.release(size)
                raise
            future.add_done_callback(lambda _, size=size: self.budget.release(size))
            pending.append((event, future))
        deliveries = [await self._confirm(event, future) for event, future in pending]
        PUBLISH_SECONDS.observe(time.perf_counter() - began)
        return deliveries

    async def _confirm(self, event: Envelope[Any], future: asyncio.Future[Any]) -> Delivery:
        try:
            metadata = await future
        except KafkaError as exc:
            PUBLISH_FAILED.labels(event.type).inc()
            raise PublishError(f"{event.type} {event.id} was not confirmed: {exc!r}") from exc
        published = self._published.get(event.type)
        if published is None:
            published = self._published[event.type] = PUBLISHED.labels(event.type)
        published.inc()
        return Delivery(event.id, event.type, metadata.topic, metadata.partition, metadata.offset)


def build_event(
    event_type: EventType,
    *,
    subject: str,
    tenant_id: str,
    data: Mapping[str, Any],
    source: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Envelope[Any]:
    """A new event from plain values, validated against its type's model."""
    try:
        return event_type.envelope_model.model_validate(
            {
                "id": uuid.uuid4(),
                "type": event_type.name,
                "source": source,
                "subject": subject,
                "tenant_id": tenant_id,
                "time": datetime.now(UTC),
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "data": data,
            }
        )
    except ValidationError as exc:
        raise InvalidEvent(_describe(event_type.name, exc)) from exc


def _describe(event_type: str, error: ValidationError) -> str:
    """One line per problem, with the field path, as the CLI and the API show it."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(event)"
        problems.append(f"{path}: {item['msg']}")
    return f"invalid {event_type}: " + "; ".join(problems)
