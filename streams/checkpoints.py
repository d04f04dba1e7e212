"""Signed checkpoints of every tenant's audit chain, published as ``audit.checkpoint`` events.

The checkpointer rides on the archiver: ``after_append`` is its
``on_appended`` hook. Per tenant, once ``every_events`` events have been
archived since the last checkpoint, or ``every_seconds`` have passed with at
least one, it signs the tenant's current head and publishes the checkpoint.
That event is archived like any other, at a later position.

Checkpoint events are not counted, so a checkpoint never triggers another one
(nor do a second checkpointer's). Counting them out costs one index probe per
decision, not per event: the head position says how many rows arrived, the
``events_by_type`` index how many of them were checkpoints.

The schedule lives in memory. On first sight of a tenant it resumes from the
last checkpoint event in the store; until ``every_seconds`` have passed since
the restart only the event count can trigger one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from event_store.checkpoints import Checkpoint, Signer
from event_store.store import AppendResult, ChainHead, EventStore
from producers.publisher import Publisher, PublishError
from schemas.models import AuditCheckpoint, Envelope

log = logging.getLogger(__name__)

CHECKPOINTS = Counter("ledgerbus_audit_checkpoints_total", "Signed checkpoints published")
CHECKPOINT_FAILURES = Counter(
    "ledgerbus_audit_checkpoint_failures_total", "Checkpoints Kafka did not confirm (retried)"
)

_CHECKPOINT = AuditCheckpoint.event_type


def checkpoint_event(checkpoint: Checkpoint, source: str) -> Envelope[AuditCheckpoint]:
    """The ``audit.checkpoint`` event that publishes ``checkpoint`` (subject ``audit:<tenant>``)."""
    return Envelope[AuditCheckpoint].new(
        checkpoint.payload(),
        source=source,
        subject=f"audit:{checkpoint.tenant_id}",
        tenant_id=checkpoint.tenant_id,
    )


@dataclass
class _Schedule:
    """One tenant's progress towards its next checkpoint."""

    head: ChainHead
    """The newest head seen: what the next checkpoint signs."""
    counted_to: int
    """Position up to which rows have been sorted into checkpoints and the rest."""
    pending: int
    """Events (not checkpoints) after the last checkpoint, up to ``counted_to``."""
    since: float
    """Clock reading of the last checkpoint, or of first sight."""

    def unsigned(self) -> int:
        """Upper bound of events after the last checkpoint (uncounted rows may be checkpoints)."""
        return self.pending + self.head.position - self.counted_to


class Checkpointer:
    """Decides when each tenant's head is due for a signed checkpoint, and publishes it."""

    def __init__(
        self,
        store: EventStore,
        publisher: Publisher,
        signer: Signer,
        *,
        every_events: int = 10_000,
        every_seconds: float = 60.0,
        source: str = "audit",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_events < 1 or every_seconds <= 0:
            raise ValueError("every_events must be >= 1 and every_seconds > 0")
        self.store = store
        self.publisher = publisher
        self.signer = signer
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.source = source
        self.clock = clock
        self._schedules: dict[str, _Schedule] = {}
        self._lock = asyncio.Lock()

    async def after_append(self, result: AppendResult) -> None:
        """The archiver's ``on_appended`` hook: checkpoint the tenants that are due."""
        async with self._lock:
            for head in result.heads.values():
                schedule = self._schedules.get(head.tenant_id)
                if schedule is None:
                    schedule = self._schedules[head.tenant_id] = await self._resume(head)
                elif head.position > schedule.head.position:
                    schedule.head = head
                await self._checkpoint_if_due(schedule)

    async def tick(self) -> None:
        """Checkpoint tenants whose time is up though nothing was appended since."""
        async with self._lock:
            for schedule in self._schedules.values():
                await self._checkpoint_if_due(schedule)

    async def run(self) -> None:
        """Tick forever, a few times per ``every_seconds`` (cancel to stop)."""
        while True:
            await asyncio.sleep(self.every_seconds / 4)
            await self.tick()

    def _due(self, schedule: _Schedule, events: int) -> bool:
        if events >= self.every_events:
            return True
        return events > 0 and self.clock() - schedule.since >= self.every_seconds

    async def _checkpoint_if_due(self, schedule: _Schedule) -> None:
        if not self._due(schedule, schedule.unsigned()):
            return
        await self._count(schedule)
        if self._due(schedule, schedule.pending):
            await self._checkpoint(schedule)

    async def _resume(self, head: ChainHead) -> _Schedule:
        """A schedule that starts at the tenant's last checkpoint event, if any."""
        last = await self.store.pool.fetchval(
            "SELECT max(position) FROM events WHERE tenant_id = $1 AND type = $2",
            head.tenant_id,
            _CHECKPOINT,
        )
        return _Schedule(head=head, counted_to=last or 0, pending=0, since=self.clock())

    async def _count(self, schedule: _Schedule) -> None:
        """Move ``counted_to`` up to the head, adding the rows that are not checkpoints."""
        checkpoints = await self.store.pool.fetchval(
            """
            SELECT count(*) FROM events
            WHERE tenant_id = $1 AND type = $2 AND position > $3 AND position <= $4
            """,
            schedule.head.tenant_id,
            _CHECKPOINT,
            schedule.counted_to,
            schedule.head.position,
        )
        schedule.pending += schedule.head.position - schedule.counted_to - checkpoints
        schedule.counted_to = schedule.head.position

    async def _checkpoint(self, schedule: _Schedule) -> None:
        head = schedule.head
        checkpoint = self.signer.sign(head.tenant_id, head.position, head.hash)
        try:
            await self.publisher.publish(checkpoint_event(checkpoint, self.source))
        except PublishError as exc:
            CHECKPOINT_FAILURES.inc()
            log.warning(
                "checkpoint of %s at %d not published: %s", head.tenant_id, head.position, exc
            )
            return  # still due: the next append or tick tries again
        CHECKPOINTS.inc()
        schedule.pending = 0
        schedule.since = self.clock()
