"""What every processor needs at run time, and the one way processors make decisions.

A decision is a PostgreSQL transaction that reads the projection rows it
depends on (``SELECT … FOR UPDATE``), records its outcome there, and returns
the events that announce it. Those events are published only after the commit,
and the Kafka offset of the input is committed by faust only after that. So:

- a crash before the commit changes nothing and the input is handled again;
- a crash after the commit but before the publish is healed when the input is
  redelivered: the decision is found already made and its events are emitted
  again with the same, derived, event ids (``derived_id``), which every
  consumer and the archive deduplicate.

Two workers that both think they own a partition (a rebalance in progress)
serialise on the row locks, so the check-then-act is never raced.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import faust
from aiokafka import AIOKafkaProducer
from mode import Service
from prometheus_client import Counter

from consumers.dead_letters import DeadLetters, Poison
from event_store.errors import TRANSIENT_ERRORS
from event_store.migrate import Connection
from producers.publisher import Delivery, Publisher, PublishError
from schemas.catalog import EventCatalog
from schemas.models import Envelope
from schemas.serde import DecodeError, EventDeserializer, EventSerializer

log = logging.getLogger("ledgerbus.streams")

RETRIED = Counter(
    "ledgerbus_stream_retries_total",
    "Decisions retried after a transient database or Kafka error",
    ["processor"],
)

#: Errors worth waiting out: the database or the broker is briefly away.
TRANSIENT: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, PublishError)

_NAMESPACE = uuid.UUID("6f1c3c52-5f5e-4d0e-9d55-0d6a3d1b7e41")

Decide = Callable[[Connection], Awaitable[Sequence[Envelope[Any]]]]


def derived_id(cause: uuid.UUID | str, kind: str) -> uuid.UUID:
    """The id of the event that ``kind`` of decision on ``cause`` produces.

    Deterministic, so re-emitting a decision after a crash yields the same event
    and downstream deduplication by id makes it count once.
    """
    return uuid.uuid5(_NAMESPACE, f"{cause}/{kind}")


class StreamsContext(Service):
    """Pool, publisher, deserializer and dead letters, opened before the agents start."""

    def __init__(
        self,
        *,
        database_url: str,
        bootstrap: str,
        catalog: EventCatalog,
        deserializer: EventDeserializer,
        serializer: EventSerializer,
        group: str,
        pool_size: int = 8,
    ) -> None:
        super().__init__()
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.catalog = catalog
        self.deserializer = deserializer
        self.serializer = serializer
        self.group = group
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._publisher: Publisher | None = None
        self._dlq_producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=self.pool_size
        )
        self._publisher = Publisher(self.bootstrap, self.serializer, source="streams")
        await self._publisher.start()
        self._dlq_producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self._dlq_producer.start()

    async def on_stop(self) -> None:
        if self._dlq_producer is not None:
            await self._dlq_producer.stop()
        if self._publisher is not None:
            await self._publisher.stop()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("StreamsContext is not started")
        return self._pool

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("StreamsContext is not started")
        return self._publisher

    async def decode(self, event: faust.EventT[Any]) -> Envelope[Any] | None:
        """The event behind a faust message, or None after dead-lettering poison."""
        try:
            return await self.deserializer.deserialize(event.message.value)
        except DecodeError as exc:
            await self.dead_letter(event, exc.reason, str(exc))
            return None

    async def dead_letter(self, event: faust.EventT[Any], reason: str, error: str) -> None:
        """Send the message behind ``event`` to its dead-letter topic: poison, or
        an input a processor failed on for a reason retrying will not cure."""
        message = event.message
        assert self._dlq_producer is not None
        await DeadLetters(self._dlq_producer, self.group).send(
            Poison(
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                _header_pairs(message.headers),
                reason,
                error,
            )
        )

    async def decide(self, processor: str, decide: Decide) -> list[Delivery]:
        """Run ``decide`` in one transaction, then publish what it returned.

        Transient failures are retried with backoff, never skipped: ``decide``
        must be idempotent (find its earlier outcome and return the same events).
        """
        delay = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    events = await decide(conn)
                return await self.publisher.publish_many(events) if events else []
            except TRANSIENT as exc:
                RETRIED.labels(processor).inc()
                log.warning("%s: %r; retrying in %.1fs", processor, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def derived_event(
    context: StreamsContext,
    event_type: str,
    *,
    cause: Envelope[Any],
    kind: str,
    subject: str,
    data: dict[str, Any],
    time: datetime,
    source: str,
) -> Envelope[Any]:
    """An event decided because of ``cause``: same tenant and correlation, derived id."""
    return context.catalog.get(event_type).envelope_model.model_validate(
        {
            "id": derived_id(cause.id, kind),
            "type": event_type,
            "source": source,
            "subject": subject,
            "tenant_id": cause.tenant_id,
            "time": time,
            "correlation_id": cause.correlation_id or str(cause.id),
            "causation_id": str(cause.id),
            "data": data,
        }
    )


def _header_pairs(
    headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)
