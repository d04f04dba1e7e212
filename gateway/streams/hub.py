"""One Kafka consumer per gateway process, fanning live events out to subscribers.

The hub assigns itself every partition of every ledgerbus topic (no consumer
group: it takes no one's share and commits nothing) and starts at the high
watermark. Each record is decoded once, checked against its tenant header,
kept in a ring of recent events (for resuming by event id, and to drop
at-least-once duplicates) and offered to the subscribers of its tenant only.
Offering never waits: a full subscriber is dropped, the others are unaffected.

Per-subject order holds because the Kafka key is the subject: one partition,
read in order, dispatched in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from gateway.streams.frames import Frame
from gateway.streams.metrics import DROPPED, FANNED_OUT, SKIPPED
from gateway.streams.subscription import Subscription
from schemas.models import Envelope
from schemas.serde import TENANT_HEADER, DecodeError, EventDeserializer

log = logging.getLogger(__name__)

#: How long a fetch may wait for data. The embedded broker answers a waiting fetch
#: when the wait ends, not when data arrives (see streams.app), so aiokafka's 500 ms
#: would be added to every live event's latency; idle, the hub fetches 20 times a second.
FETCH_MAX_WAIT_MS = 50

#: Records fanned out between turns of the event loop, in which the subscribers'
#: writers drain their queues: fewer than the smallest queue (10), so a burst
#: fetched at once does not overflow subscribers that keep up.
YIELD_EVERY = 8


class LiveEvent:
    """A decoded event and its frame, built on first use and shared."""

    __slots__ = ("_frame", "event", "seq")

    def __init__(self, seq: int, event: Envelope[Any]) -> None:
        self.seq = seq
        self.event = event
        self._frame: Frame | None = None

    @property
    def frame(self) -> Frame:
        if self._frame is None:
            self._frame = Frame.live(self.event)
        return self._frame


class StreamHub:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        deserializer: EventDeserializer,
        *,
        ring_events: int,
        start_timeout: float = 10.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.deserializer = deserializer
        self.ring_events = ring_events
        self.start_timeout = start_timeout
        self._ring: deque[LiveEvent] = deque()
        self._by_id: dict[uuid.UUID, LiveEvent] = {}
        # by tenant and subject (None: every subject), so an event meets only its subscribers
        self._subscribers: dict[tuple[str, str | None], dict[Subscription, None]] = {}
        self._seq = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Assign every partition at its end; fan out from then on."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        try:
            await consumer.topics()  # loads metadata for every topic
            partitions = [
                TopicPartition(topic, partition)
                for topic in self.topics
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(partitions)
            await self._skip_history(consumer, partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                self.leave(subscription)
                subscription.drop("the gateway is shutting down")

    def join(self, subscription: Subscription) -> None:
        """Live events from now on."""
        self._subscribers.setdefault(subscription.key, {})[subscription] = None

    def join_with_ring(self, subscription: Subscription) -> list[LiveEvent]:
        """Live events from now on, and (returned) the recent ones it wants.

        No await between the two: no event falls between the ring and the queue.
        """
        self.join(subscription)
        return [live for live in self._ring if self._wanted(subscription, live)]

    def join_after(self, subscription: Subscription, event_id: uuid.UUID) -> list[LiveEvent] | None:
        """Like `join_with_ring`, from just after ``event_id``; None (and not joined)
        if the ring no longer holds it or it is another tenant's."""
        last = self._by_id.get(event_id)
        if last is None or last.event.tenant_id != subscription.tenant_id:
            return None
        self.join(subscription)
        after = islice(self._ring, last.seq - self._ring[0].seq + 1, None)
        return [live for live in after if self._wanted(subscription, live)]

    def leave(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.key)
        if subscribers is not None:
            subscribers.pop(subscription, None)
            if not subscribers:
                del self._subscribers[subscription.key]

    @staticmethod
    def _wanted(subscription: Subscription, live: LiveEvent) -> bool:
        return live.event.tenant_id == subscription.tenant_id and subscription.wants(live.event)

    async def _skip_history(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        """Move every partition to the high watermark that fetch responses report.

        ``end_offsets()`` is only a lower bound on the embedded broker (the first
        offset of the last batch + 1, SPEC.md known limits), so start there and
        read, discarding, up to the fetched high watermark: at most one batch per
        partition. Nothing is decoded: the schema registry may be this very
        gateway, not serving yet.
        """
        ends = await consumer.end_offsets(partitions)
        for partition in partitions:
            consumer.seek(partition, ends[partition])
        try:
            async with asyncio.timeout(self.start_timeout):
                while not await _at_high_watermark(consumer, partitions):
                    await consumer.getmany(timeout_ms=100)
        except TimeoutError:
            log.warning(
                "stream hub: no high watermark after %.0f s; starting anyway", self.start_timeout
            )

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except Exception as exc:  # aiokafka retries most errors itself; never stop the hub
                log.warning("stream hub: fetch failed, retrying: %r", exc)
                await asyncio.sleep(1)
                continue
            handled = 0
            for records in batches.values():
                for record in records:
                    event = await self._decode(record)
                    if event is not None:
                        self._fan_out(event)
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let subscribers drain their queues

    async def _decode(self, record: ConsumerRecord) -> Envelope[Any] | None:
        """The record's event, or None (counted, logged) if it cannot be streamed."""
        try:
            event = self.deserializer.deserialize_cached(record.value)
            if event is None:
                event = await self.deserializer.deserialize(record.value)
        except DecodeError as exc:
            _skip(record, exc.reason, str(exc))
            return None
        except Exception as exc:  # e.g. the registry unreachable: never stop the hub
            _skip(record, "error", repr(exc))
            return None
        for name, value in record.headers or ():
            if name == TENANT_HEADER and value != event.tenant_id.encode():
                _skip(record, "tenant_mismatch", "tenant header differs from the envelope's")
                return None
        return event

    def _fan_out(self, event: Envelope[Any]) -> None:
        if event.id in self._by_id:
            return  # an at-least-once duplicate of an event already streamed
        self._seq += 1
        live = LiveEvent(self._seq, event)
        if self.ring_events:
            if len(self._ring) >= self.ring_events:
                del self._by_id[self._ring.popleft().event.id]
            self._ring.append(live)
            self._by_id[event.id] = live
        queued = 0
        full: list[Subscription] = []
        for key in ((event.tenant_id, event.subject), (event.tenant_id, None)):
            for subscription in self._subscribers.get(key, ()):
                if subscription.wants(event):
                    if subscription.offer(live):
                        queued += 1
                    else:
                        full.append(subscription)
        for subscription in full:
            self.leave(subscription)
            subscription.drop(f"too slow: more than {subscription.capacity} events waiting")
            DROPPED.labels(subscription.protocol).inc()
        if queued:
            FANNED_OUT.inc(queued)


async def _at_high_watermark(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    for partition in partitions:
        highwater = consumer.highwater(partition)
        if highwater is None or await consumer.position(partition) < highwater:
            return False
    return True


def _skip(record: ConsumerRecord, reason: str, detail: str) -> None:
    SKIPPED.labels(reason).inc()
    log.warning(
        "stream hub: skipping %s:%d@%d: %s", record.topic, record.partition, record.offset, detail
    )
