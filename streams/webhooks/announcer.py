"""Publishing what the recorder decided, in order, off the recording path.

Waiting for Kafka's acknowledgement inside the record loop would add a broker
round trip to every claim-attempt-record cycle. The events are safe in the
outbox once recorded, so they are handed here and published in the order they
were recorded (so per endpoint in attempt order), many batches per request
under load; the outbox rows go once Kafka has confirmed them. A publish that
fails leaves them in the outbox, for the housekeeping relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from schemas.models import Envelope
from streams.context import TRANSIENT, StreamsContext
from streams.webhooks import outbox
from streams.webhooks.metrics import ERRORS

log = logging.getLogger("ledgerbus.webhooks")

#: Events per publish at most.
PUBLISH_BATCH = 2000


class Announcer:
    """Publishes handed-over events in order; ``run`` until cancelled, then ``flush``."""

    def __init__(self, context: StreamsContext) -> None:
        self.context = context
        self._pending: list[Envelope[Any]] = []
        self._ready = asyncio.Event()

    def add(self, events: Sequence[Envelope[Any]]) -> None:
        self._pending += events
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Publish everything handed over so far."""
        while self._pending:
            batch = self._pending[:PUBLISH_BATCH]
            del self._pending[:PUBLISH_BATCH]
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                self._pending[:0] = batch
                raise

    async def _publish(self, events: list[Envelope[Any]]) -> None:
        try:
            await self.context.publisher.publish_many(events)
            async with self.context.pool.acquire() as conn:
                await outbox.done(conn, [event.id for event in events])
        except TRANSIENT as exc:
            log.warning("publishing %d webhook events: %r; the outbox keeps them", len(events), exc)
        except Exception:
            ERRORS.labels("announce").inc()
            log.exception("publishing %d webhook events failed; the outbox keeps them", len(events))
