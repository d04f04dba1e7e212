"""Reading a subscriber's missed events back from the event store.

Archived events come in position order, each framed with its position as id,
so a subscriber that disconnects during a catch-up resumes exactly there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import asyncpg

from event_store.decoding import decode
from event_store.store import EventStore
from gateway.streams.filters import StreamFilter
from gateway.streams.frames import Frame
from gateway.streams.metrics import SKIPPED
from schemas.serde import DecodeError, EventDeserializer

log = logging.getLogger(__name__)

#: Rows per store page and frames per batch sent.
BATCH = 500


@dataclass(frozen=True, slots=True)
class Archived:
    position: int
    event_id: uuid.UUID
    frame: Frame


async def archived_batches(
    store: EventStore,
    deserializer: EventDeserializer,
    tenant_id: str,
    stream_filter: StreamFilter,
    after_position: int,
) -> AsyncIterator[list[Archived]]:
    """The tenant's archived events after ``after_position`` that pass the filter,
    up to the archive's current end; undecodable rows are skipped and counted."""
    batch: list[Archived] = []
    query = stream_filter.query(after_position + 1)
    async for stored in store.read(tenant_id, query, page_size=BATCH):
        try:
            event = await decode(deserializer, stored.schema_id, stored.body)
        except DecodeError as exc:
            SKIPPED.labels(exc.reason).inc()
            log.warning("stream: skipping archived %s@%d: %s", tenant_id, stored.position, exc)
            continue
        batch.append(Archived(stored.position, event.id, Frame.archived(stored.position, event)))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def archived_positions(
    pool: asyncpg.Pool, tenant_id: str, event_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """Positions of those of ``event_ids`` that the tenant's archive holds."""
    if not event_ids:
        return {}
    rows = await pool.fetch(
        "SELECT event_id, position FROM events WHERE tenant_id = $1 AND event_id = ANY($2::uuid[])",
        tenant_id,
        list(event_ids),
    )
    return {uuid.UUID(bytes=row["event_id"].bytes): row["position"] for row in rows}


async def position_of(
    store: EventStore, tenant_id: str, event_id: uuid.UUID, wait: float
) -> int | None:
    """The archive position of the tenant's event ``event_id``, waiting up to ``wait``
    seconds for the archiver; None if it is not (or is another tenant's)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        stored = await store.get(event_id)
        if stored is not None:
            return stored.position if stored.tenant_id == tenant_id else None
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(0.1)


class RecentIds:
    """The last ``limit`` event ids sent: a catch-up's events that the ring or the
    live queue may hold again. Older ones cannot still be there."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: set[uuid.UUID] = set()
        self._order: deque[uuid.UUID] = deque()

    def add(self, event_id: uuid.UUID) -> None:
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.limit:
            self._ids.discard(self._order.popleft())

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids
