"""One subscriber's live queue: bounded, so a slow reader costs only itself.

The hub never waits for a subscriber: `offer` either queues the event or says
the queue is full, and the hub then drops the subscriber with a reason. The
reader takes everything queued at once, so a busy stream sends batches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.streams.filters import StreamFilter
from schemas.models import Envelope

if TYPE_CHECKING:
    from gateway.streams.hub import LiveEvent

#: How long a dropped subscriber's connection may take to deliver the final message.
DROP_GRACE_SECONDS = 5.0


class StreamDropped(Exception):
    """The subscriber was dropped; ``reason`` is what it is told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    def __init__(
        self, tenant_id: str, stream_filter: StreamFilter, capacity: int, protocol: str
    ) -> None:
        self.tenant_id = tenant_id
        self.filter = stream_filter
        self.capacity = capacity
        self.protocol = protocol
        self.dropped: str | None = None
        self._queue: deque[LiveEvent] = deque()
        self._ready = asyncio.Event()
        self._gone = asyncio.Event()
        self._types: dict[str, bool] = {}  # glob verdicts, by event type

    @property
    def key(self) -> tuple[str, str | None]:
        """What the hub files it under: tenant and subject (None: every subject)."""
        return self.tenant_id, self.filter.subject

    def wants(self, event: Envelope[Any]) -> bool:
        """Subject and types; the hub has already matched the tenant."""
        subject = self.filter.subject
        if subject is not None and event.subject != subject:
            return False
        verdict = self._types.get(event.type)
        if verdict is None:
            verdict = self._types[event.type] = self.filter.matches_type(event.type)
        return verdict

    def offer(self, live: LiveEvent) -> bool:
        """Queue ``live``; False when the queue is full (then the hub drops us)."""
        if len(self._queue) >= self.capacity:
            return False
        self._queue.append(live)
        self._ready.set()
        return True

    def drop(self, reason: str) -> None:
        self.dropped = reason
        self._queue.clear()
        self._ready.set()
        self._gone.set()

    async def stuck_after_drop(self) -> None:
        """Returns `DROP_GRACE_SECONDS` after a drop: by then a writer that is not stuck
        on a client reading nothing has sent the final message and finished."""
        await self._gone.wait()
        await asyncio.sleep(DROP_GRACE_SECONDS)

    async def take(self, timeout: float) -> list[LiveEvent]:
        """Everything queued, waiting up to ``timeout`` for the first; [] when idle."""
        if not self._queue and self.dropped is None:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
        if self.dropped is not None:
            raise StreamDropped(self.dropped)
        taken = list(self._queue)
        self._queue.clear()
        return taken
