"""The matcher: every event that an enabled endpoint of its tenant subscribes to is queued.

A batch of events is one transaction: read the tenants' endpoints, queue one
delivery per (endpoint, event) match with the CloudEvents body it will send.
The delivery id is derived from both ids, so an event seen again (Kafka
redelivery after a crash, a rebalance) queues nothing new. Matching is per
tenant only: an endpoint never receives another tenant's events.

``webhook.*`` events are never matched: delivery attempts would feed the loop
(every attempt an event, every event a delivery), and subscription events
carry signing secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust

from event_store.migrate import Connection
from schemas.models import Envelope
from streams.context import StreamsContext
from streams.webhooks import payload, queue, subscriptions
from streams.webhooks.metrics import ENQUEUED, ERRORS

log = logging.getLogger("ledgerbus.webhooks")

NAME = "webhooks"
NEVER_MATCHED = "webhook."


class Matcher:
    """Queues the deliveries of batches of events; ``enqueued`` is told how many were new."""

    def __init__(self, context: StreamsContext, enqueued: Callable[[int], None]) -> None:
        self.context = context
        self.enqueued = enqueued

    async def handle(self, events: Sequence[faust.EventT[Any]]) -> None:
        decoded = [(event, await self.context.decode(event)) for event in events]
        wanted = [
            (event, envelope)
            for event, envelope in decoded
            if envelope is not None and not envelope.type.startswith(NEVER_MATCHED)
        ]
        if not wanted:
            return
        try:
            await self._enqueue([envelope for _, envelope in wanted])
        except Exception:  # a bug, not a passing outage (those are retried): find the culprit
            for event, envelope in wanted:
                try:
                    await self._enqueue([envelope])
                except Exception as exc:
                    ERRORS.labels("match").inc()
                    log.exception("webhooks: matching %s %s failed", envelope.type, envelope.id)
                    await self.context.dead_letter(event, "webhook_match_failed", repr(exc))

    async def _enqueue(self, envelopes: Sequence[Envelope[Any]]) -> None:
        added = 0

        async def decide(conn: Connection) -> list[Envelope[Any]]:
            nonlocal added
            deliveries = await matches(conn, envelopes)
            added = await queue.enqueue(conn, deliveries, datetime.now(UTC))
            return []

        await self.context.decide(NAME, decide)
        if added:
            ENQUEUED.inc(added)
            self.enqueued(added)


async def matches(conn: Connection, envelopes: Sequence[Envelope[Any]]) -> list[queue.NewDelivery]:
    """One delivery per (event, enabled endpoint of its tenant whose globs match its type)."""
    endpoints = await subscriptions.active(conn, sorted({e.tenant_id for e in envelopes}))
    found: list[queue.NewDelivery] = []
    for envelope in envelopes:
        body: str | None = None
        for endpoint in endpoints.get(envelope.tenant_id, ()):
            if not endpoint.matches(envelope.type):
                continue
            body = body or payload.body(envelope)
            found.append(
                queue.NewDelivery(
                    envelope.tenant_id,
                    endpoint.webhook_id,
                    envelope.id,
                    envelope.type,
                    envelope.correlation_id,
                    body,
                )
            )
    return found
