"""The consumer runtime every ledgerbus component builds on.

At-least-once: a batch from ``getmany`` is handled completely (handlers done,
poison messages dead-lettered and acknowledged) before its offsets are
committed, so a crash re-delivers only what was not committed. Within a batch,
records with different keys are handled concurrently (bounded), records with
the same key strictly in order, which keeps per-subject order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge, Histogram

from consumers.dead_letters import DeadLetters, Poison
from schemas.models import Envelope
from schemas.serde import DecodeError, EventDeserializer

log = logging.getLogger(__name__)

CONSUMED = Counter("ledgerbus_consumed_total", "Events handled successfully", ["group", "type"])
FAILED = Counter(
    "ledgerbus_handler_failures_total", "Handler attempts that raised", ["group", "type"]
)
LAG = Gauge(
    "ledgerbus_consumer_lag", "High watermark minus position", ["group", "topic", "partition"]
)
HANDLER_SECONDS = Histogram("ledgerbus_handler_seconds", "Handler latency", ["group", "type"])

Handler = Callable[[Envelope[Any]], Awaitable[None]]
RecordHandler = Callable[[Envelope[Any], ConsumerRecord], Awaitable[None]]
"""A handler that also needs the Kafka record (its position, its exact bytes)."""


class PermanentError(Exception):
    """Raised by a handler for input it will never accept: dead-letter at once, no retry,
    with ``reason`` in the dead letter's headers."""

    def __init__(self, message: str, reason: str = "handler_rejected") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient handler errors."""

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2**attempt))


@dataclass
class ConsumerConfig:
    bootstrap: str
    group_id: str
    topics: Sequence[str]
    max_concurrency: int = 64
    max_poll_records: int = 1000
    session_timeout_ms: int = 6000  # the embedded broker detects dead members at ~1.5x this
    #: How long a fetch may wait for data. Tansu answers a waiting fetch when the
    #: wait ends, not when data arrives (see streams.app), so aiokafka's default
    #: 500 ms would be added to every hop of a quiet topic.
    fetch_max_wait_ms: int = 20
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class ConsumerLoop(ABC):
    """A consumer-group member: poll a batch, handle it all, commit it, report lag.

    Subclasses say what handling a batch means (``handle_batches``); poison
    records go to ``dead_letter`` and count as handled.
    """

    def __init__(self, config: ConsumerConfig, dead_letters: DeadLetters) -> None:
        self.config = config
        self.dead_letters = dead_letters
        self._consumer = AIOKafkaConsumer(
            *config.topics,
            bootstrap_servers=config.bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(500, config.session_timeout_ms // 3),
            max_poll_records=config.max_poll_records,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
        )
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()

    def request_stop(self) -> None:
        """Finish and commit the batch in hand, then return from ``run``."""
        self._stopping.set()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=200)
            if batches:
                await self.handle_batches(batches)
                await self._commit(batches)
                await self._report_lag()

    @abstractmethod
    async def handle_batches(
        self, batches: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> None: ...

    async def dead_letter(self, record: ConsumerRecord, reason: str, error: str) -> None:
        await self.dead_letters.send(
            Poison(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=list(record.headers),
                reason=reason,
                error=error,
            )
        )

    async def _commit(self, batches: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away: their new owner re-handles
            # the uncommitted records (at-least-once; handlers dedup by event id).
            log.warning("commit of %s failed: %r", offsets, exc)

    async def _report_lag(self) -> None:
        # Fetch responses carry a correct high watermark even on the embedded
        # broker, whose end_offsets() is wrong (SPEC.md, known limits).
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                position = await self._consumer.position(tp)
                lag = max(0, highwater - position)
                LAG.labels(self.config.group_id, tp.topic, str(tp.partition)).set(lag)


@dataclass(frozen=True, slots=True)
class _TypeMetrics:
    consumed: Counter
    failed: Counter
    seconds: Histogram


class EventConsumer(ConsumerLoop):
    """Decode, dispatch by event type, retry, dead-letter, commit."""

    def __init__(
        self,
        config: ConsumerConfig,
        deserializer: EventDeserializer,
        handlers: Mapping[str, Handler] | Mapping[str, RecordHandler],
        dead_letters: DeadLetters,
        *,
        with_records: bool = False,
    ) -> None:
        """``with_records``: handlers are ``RecordHandler``s, called with the record too."""
        super().__init__(config, dead_letters)
        self.deserializer = deserializer
        self.handlers: dict[str, Callable[..., Awaitable[None]]] = dict(handlers)
        self.with_records = with_records
        self._limit = asyncio.Semaphore(config.max_concurrency)
        # Metric children per event type: .labels() costs more than the handler call.
        self._metrics = {
            name: _TypeMetrics(
                CONSUMED.labels(config.group_id, name),
                FAILED.labels(config.group_id, name),
                HANDLER_SECONDS.labels(config.group_id, name),
            )
            for name in self.handlers
        }

    async def handle_batches(self, batches: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """Handle every record; per key in order, keys concurrently."""
        chains: list[list[ConsumerRecord]] = []
        for records in batches.values():
            by_key: dict[bytes | None, list[ConsumerRecord]] = {}
            for record in records:
                chain = by_key.get(record.key)
                if chain is None:
                    chain = by_key[record.key] = []
                chain.append(record)
            chains += by_key.values()
        if len(chains) == 1:
            await self._handle_in_order(chains[0])
            return
        await asyncio.gather(*map(self._handle_in_order, chains))

    async def _handle_in_order(self, records: list[ConsumerRecord]) -> None:
        """One key's records, one after the other.

        The common path is inline, with no coroutine of its own per record:
        the event type read from the value's schema id (records no handler
        wants are skipped undecoded), decoding through cached readers, the first
        attempt, and one counter update per chain. Retries and dead letters
        take the slow path.
        """
        deserializer, handlers, metrics_of = self.deserializer, self.handlers, self._metrics
        with_records = self.with_records
        consumed: dict[str, int] = {}
        async with self._limit:
            for record in records:
                value = record.value
                reader = deserializer.cached_reader(value)
                try:
                    if reader is None:
                        event = await deserializer.deserialize(value)
                    elif reader.event_type.name not in handlers:
                        continue  # not this consumer's business: not even decoded
                    else:
                        event = reader.event(value)
                except DecodeError as exc:
                    await self.dead_letter(record, exc.reason, str(exc))
                    continue
                handler = handlers.get(event.type)
                if handler is None:
                    continue
                began = time.perf_counter()
                try:
                    await (handler(event, record) if with_records else handler(event))
                except Exception as exc:
                    await self._retry(handler, event, record, exc)
                else:
                    metrics_of[event.type].seconds.observe(time.perf_counter() - began)
                    consumed[event.type] = consumed.get(event.type, 0) + 1
        for event_type, count in consumed.items():
            metrics_of[event_type].consumed.inc(count)

    async def _retry(
        self,
        handler: Callable[..., Awaitable[None]],
        event: Envelope[Any],
        record: ConsumerRecord,
        error: Exception,
    ) -> None:
        """After a failed first attempt: retry with backoff, or dead-letter."""
        metrics = self._metrics[event.type]
        retry = self.config.retry
        attempts = 1
        while True:
            metrics.failed.inc()
            if isinstance(error, PermanentError):
                await self.dead_letter(record, error.reason, str(error))
                return
            if attempts >= retry.attempts:
                await self.dead_letter(record, "handler_gave_up", repr(error))
                return
            log.warning("%s %s failed (attempt %d): %r", event.type, event.id, attempts, error)
            await asyncio.sleep(retry.delay(attempts - 1))
            attempts += 1
            began = time.perf_counter()
            try:
                await (handler(event, record) if self.with_records else handler(event))
            except Exception as exc:
                error = exc
            else:
                metrics.seconds.observe(time.perf_counter() - began)
                metrics.consumed.inc()
                return
