"""Projections: PostgreSQL tables derived only from archived events.

A projection owns some tables and folds events into them one at a time. The
runner feeds it each tenant's events in position order and records how far it
got (its checkpoint) in the same transaction as the changes, so after a crash
either both are there or neither: every event takes effect exactly once.

``rebuild`` empties a projection's tables and replays the whole archive in one
transaction: a failure leaves the old state, and readers of those tables wait
for the commit (TRUNCATE locks them) rather than see them half built. Since
``apply`` may depend only on the events (no clock, no randomness), the result
is identical to what the runner built incrementally.

The runner's batches and ``rebuild`` take the same transaction-level advisory
lock per projection, so a rebuild, and any number of runner processes, never
interleave on one projection: whoever comes second waits, then re-reads the
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
from prometheus_client import Counter, Gauge

from event_store.decoding import decode
from event_store.migrate import Connection
from event_store.store import glob_to_like
from schemas.models import Envelope
from schemas.serde import EventDeserializer

log = logging.getLogger(__name__)

# Labelled by projection only: a per-tenant label would grow without bound.
LAG = Gauge(
    "ledgerbus_projection_lag_events",
    "Archived events past the projection's checkpoints, summed over tenants",
    ["projection"],
)
APPLIED = Counter(
    "ledgerbus_projection_applied_total", "Events applied to a projection", ["projection"]
)
FAILURES = Counter(
    "ledgerbus_projection_failures_total",
    "Batches rolled back because an event could not be decoded or applied",
    ["projection"],
)

#: First key of every projection's advisory lock; the second is the hash of its name.
_LOCK_CLASS = 0x70726F6A  # "proj"

#: Waiting after passes that only failed doubles up to this, to keep logs readable.
_MAX_BACKOFF = 30.0

_EVENTS = """
SELECT position, schema_id, body FROM events
WHERE tenant_id = $1 AND position > $2 AND position <= $3 AND type LIKE ANY($4::text[])
ORDER BY position
"""

_BEHIND = """
SELECT h.tenant_id, h.position AS head, coalesce(c.position, 0) AS checkpoint
FROM chain_heads h
LEFT JOIN projection_checkpoints c ON c.tenant_id = h.tenant_id AND c.projection = $1
WHERE h.position > coalesce(c.position, 0)
ORDER BY h.tenant_id
"""

_SAVE_CHECKPOINT = """
INSERT INTO projection_checkpoints (projection, tenant_id, position) VALUES ($1, $2, $3)
ON CONFLICT (projection, tenant_id) DO UPDATE SET position = EXCLUDED.position
"""


@dataclass(frozen=True, slots=True)
class ProjectedEvent:
    """A decoded event and where it sits in its tenant's history."""

    position: int
    envelope: Envelope[Any]


class Projection(ABC):
    """Tables derived from events; subclass, declare the class attributes, implement ``apply``."""

    #: Unique; names the checkpoints and the lock.
    name: ClassVar[str]
    #: Event types handled, as names or globs (``approval.*``).
    event_types: ClassVar[tuple[str, ...]]
    #: Every table the projection owns, emptied by ``rebuild``.
    tables: ClassVar[tuple[str, ...]]
    #: Creates those tables; must be idempotent (``CREATE TABLE IF NOT EXISTS``).
    ddl: ClassVar[str]

    @abstractmethod
    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        """Fold one event into the tables, on ``conn`` whose transaction is open.

        Must depend only on the event and the tables, never on the clock, so a
        rebuild reproduces the same rows.
        """


class UnknownProjection(LookupError):
    """No projection has that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown projection {name!r}; known: {', '.join(known) or 'none'}")


@dataclass(frozen=True, slots=True)
class _Batch:
    reached: int  # the new checkpoint
    applied: int  # events handed to ``apply``


class ProjectionRunner:
    """Keeps projections current with the archive, and rebuilds them on demand."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        projections: Sequence[Projection],
        deserializer: EventDeserializer,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
    ) -> None:
        self.pool = pool
        self.projections = {p.name: p for p in projections}
        self.deserializer = deserializer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._stopping = asyncio.Event()

    def _projection(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            raise UnknownProjection(name, sorted(self.projections)) from None

    async def install(self) -> None:
        """Create every projection's tables (idempotent; run after the migrations)."""
        async with self.pool.acquire() as conn:
            for projection in self.projections.values():
                # Under the projection's lock: workers starting together would
                # otherwise race on CREATE TABLE IF NOT EXISTS (pg_type collision).
                async with conn.transaction():
                    await _lock(conn, projection)
                    await conn.execute(projection.ddl)

    async def run(self) -> None:
        """Apply new events until ``stop``; a batch in progress is finished first."""
        self._stopping.clear()
        wait = self.poll_interval
        while not self._stopping.is_set():
            advanced, failed = await self.run_once()
            if advanced:
                wait = self.poll_interval
                continue
            wait = min(wait * 2, _MAX_BACKOFF) if failed else self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    def stop(self) -> None:
        self._stopping.set()

    async def run_once(self) -> tuple[int, int]:
        """One batch for every (projection, tenant) that is behind; returns
        (batches committed, batches rolled back). Tenants take turns, so one tenant's
        backlog does not delay the others by more than a batch."""
        advanced = failed = 0
        for projection in self.projections.values():
            behind = await self.pool.fetch(_BEHIND, projection.name)
            LAG.labels(projection.name).set(sum(r["head"] - r["checkpoint"] for r in behind))
            for row in behind:
                if self._stopping.is_set():
                    break
                try:
                    await self._advance(projection, row["tenant_id"], row["head"])
                    advanced += 1
                except Exception:
                    FAILURES.labels(projection.name).inc()
                    failed += 1
                    log.exception(
                        "projection %s, tenant %s: batch after position %d rolled back",
                        projection.name,
                        row["tenant_id"],
                        row["checkpoint"],
                    )
        return advanced, failed

    async def rebuild(self, name: str, progress: Callable[[int], None] = lambda _: None) -> int:
        """Empty the projection and replay every tenant's history up to its head,
        in one transaction; ``progress`` gets the number of events of each batch.
        Returns the number of events applied."""
        projection = self._projection(name)
        total = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await _lock(conn, projection)
            await conn.execute(projection.ddl)
            tables = ", ".join(f'"{table}"' for table in projection.tables)
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
            await conn.execute("DELETE FROM projection_checkpoints WHERE projection = $1", name)
            heads = await conn.fetch(
                "SELECT tenant_id, position FROM chain_heads WHERE position > 0 ORDER BY tenant_id"
            )
            for tenant_id, head in heads:
                reached = 0
                while reached < head:
                    batch = await self._apply_batch(conn, projection, tenant_id, reached, head)
                    reached = batch.reached
                    total += batch.applied
                    progress(batch.applied)
                await conn.execute(_SAVE_CHECKPOINT, name, tenant_id, head)
        return total

    async def _advance(self, projection: Projection, tenant_id: str, head: int) -> None:
        """Apply the next batch and move the checkpoint, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _lock(conn, projection)
            checkpoint = await conn.fetchval(
                "SELECT position FROM projection_checkpoints WHERE projection = $1 "
                "AND tenant_id = $2",
                projection.name,
                tenant_id,
            )
            after = checkpoint or 0
            if after >= head:  # another runner, or a rebuild, got here first
                return
            batch = await self._apply_batch(conn, projection, tenant_id, after, head)
            await conn.execute(_SAVE_CHECKPOINT, projection.name, tenant_id, batch.reached)
        APPLIED.labels(projection.name).inc(batch.applied)
        LAG.labels(projection.name).dec(batch.reached - after)

    async def _apply_batch(
        self, conn: Connection, projection: Projection, tenant_id: str, after: int, head: int
    ) -> _Batch:
        """Apply the projection's events among the next ``batch_size`` positions.

        Positions are gap-free, so a window of positions bounds the rows read
        whatever plan PostgreSQL picks (with stale statistics a ``LIMIT`` query
        can scan and sort everything after the checkpoint, every batch).
        """
        reached = min(head, after + self.batch_size)
        rows = await conn.fetch(
            _EVENTS,
            tenant_id,
            after,
            reached,
            [glob_to_like(pattern) for pattern in projection.event_types],
        )
        for position, schema_id, body in rows:
            envelope = await decode(self.deserializer, schema_id, body)
            await projection.apply(conn, ProjectedEvent(position, envelope))
        return _Batch(reached, len(rows))


async def _lock(conn: Connection, projection: Projection) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, projection.name
    )
