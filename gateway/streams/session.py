"""One subscriber's stream: catch up from the archive if resuming, then live, each event once.

Where a subscriber resumes from decides the path:

- nothing: live events from now on;
- a live event id the hub's ring still holds: the ring's events after it,
  then live. The subscriber saw events in the hub's order, and this replays
  exactly that order: no gap, no duplicate;
- an archive position (the id of a catch-up event, or ``from_position`` - 1),
  or an event id only the archive knows: archived events after that position,
  read to the end before joining (a long history never fills the live
  queue), then, joined, what was archived meanwhile, then the ring's events
  not archived yet, then live. Events are sent once by id across the switch.

The archive path is exact for positions. For an event id that was live in
another gateway process, or left this one's ring, the events of *other*
subjects around it may have been archived in a different order than they
streamed (order holds per subject), and the ring must reach back to what the
archiver has not stored yet; SPEC.md's per-subject order is what is promised.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

from event_store.store import EventStore
from gateway.problems import Problem
from gateway.services import GatewayServices
from gateway.streams.catchup import (
    BATCH,
    Archived,
    RecentIds,
    archived_batches,
    archived_positions,
    position_of,
)
from gateway.streams.filters import StreamFilter
from gateway.streams.frames import Frame
from gateway.streams.hub import LiveEvent
from gateway.streams.metrics import SUBSCRIBERS
from gateway.streams.subscription import Subscription

#: Where to resume: after this archive position, or after this event.
Resume = int | uuid.UUID


class StreamSession:
    def __init__(
        self,
        services: GatewayServices,
        subscription: Subscription,
        *,
        after_position: int | None = None,
        backlog: Sequence[LiveEvent] = (),
    ) -> None:
        self.services = services
        self.subscription = subscription
        self.after_position = after_position
        self._backlog = list(backlog)
        self._closed = False
        SUBSCRIBERS.labels(subscription.protocol).inc()

    @classmethod
    async def open(
        cls,
        services: GatewayServices,
        tenant_id: str,
        stream_filter: StreamFilter,
        resume: Resume | None,
        protocol: str,
    ) -> StreamSession:
        """Resolve ``resume`` (404 if it names no event of the tenant) and subscribe."""
        settings = services.settings
        subscription = Subscription(
            tenant_id, stream_filter, settings.stream_buffer_events, protocol
        )
        if resume is None:
            services.hub.join(subscription)
            return cls(services, subscription)
        if isinstance(resume, int):
            return cls(services, subscription, after_position=resume)
        backlog = services.hub.join_after(subscription, resume)
        if backlog is not None:
            return cls(services, subscription, backlog=backlog)
        store = EventStore(services.pool)
        position = await position_of(store, tenant_id, resume, settings.stream_resume_wait_seconds)
        if position is None:
            raise Problem(404, f"no event {resume} in this tenant's recent or archived events")
        return cls(services, subscription, after_position=position)

    async def batches(self) -> AsyncIterator[list[Frame]]:
        """Frames in order; [] after a quiet heartbeat interval.

        Raises `StreamDropped` once the hub has dropped this subscriber.
        """
        sent = RecentIds(self.services.settings.stream_ring_events + self.subscription.capacity)
        if self.after_position is not None:
            async for frames in self._catch_up(self.after_position, sent):
                yield frames
        for start in range(0, len(self._backlog), BATCH):
            yield [live.frame for live in self._backlog[start : start + BATCH]]
        self._backlog = []
        heartbeat = self.services.settings.stream_heartbeat_seconds
        while True:
            taken = await self.subscription.take(heartbeat)
            frames = [live.frame for live in taken if live.event.id not in sent]
            if frames or not taken:
                yield frames

    async def _catch_up(self, after: int, sent: RecentIds) -> AsyncIterator[list[Frame]]:
        last = after
        async for batch in self._archived(last, sent):  # before joining
            last = batch[-1].position
            yield [archived.frame for archived in batch]
        ring = self.services.hub.join_with_ring(self.subscription)
        async for batch in self._archived(last, sent):  # archived meanwhile
            yield [archived.frame for archived in batch]
        unsent = [live for live in ring if live.event.id not in sent]
        positions = await archived_positions(
            self.services.pool, self.subscription.tenant_id, [live.event.id for live in unsent]
        )
        # archived at or before `after`: the subscriber had it (or asked to start later)
        self._backlog = [live for live in unsent if positions.get(live.event.id, after + 1) > after]

    async def _archived(self, after: int, sent: RecentIds) -> AsyncIterator[list[Archived]]:
        subscription = self.subscription
        async for batch in archived_batches(
            EventStore(self.services.pool),
            self.services.deserializer,
            subscription.tenant_id,
            subscription.filter,
            after,
        ):
            for archived in batch:
                sent.add(archived.event_id)
            yield batch

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.services.hub.leave(self.subscription)
            SUBSCRIBERS.labels(self.subscription.protocol).dec()
