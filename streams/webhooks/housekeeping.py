"""Chores every worker's dispatcher does now and then; all safe to run concurrently.

- publish events a dead worker left in the outbox (rows locked, skipped by others);
- refresh the queue-depth and disabled-endpoints gauges;
- forget old successes and the leftovers of deleted endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from streams.context import TRANSIENT, StreamsContext
from streams.webhooks import outbox, queue
from streams.webhooks.metrics import DISABLED_ENDPOINTS, ERRORS, QUEUE_DEPTH
from streams.webhooks.settings import WebhookSettings

log = logging.getLogger("ledgerbus.webhooks")

#: Seconds between rounds.
INTERVAL = 5.0
#: Outbox events older than this were left by a worker that died before publishing.
OUTBOX_GRACE = timedelta(seconds=10)


async def run(context: StreamsContext, settings: WebhookSettings) -> None:
    """Do the chores every ``INTERVAL`` until cancelled; a failed round is logged and
    the next one tries again."""
    while True:
        try:
            await relay_outbox(context, datetime.now(UTC))
            await tidy(context, settings, datetime.now(UTC))
        except Exception as exc:
            if not isinstance(exc, TRANSIENT):
                ERRORS.labels("housekeeping").inc()
            log.warning("webhook housekeeping: %r; trying again later", exc)
        await asyncio.sleep(INTERVAL)


async def relay_outbox(context: StreamsContext, now: datetime) -> int:
    """Publish what dead workers left in the outbox; returns how many events."""
    async with context.pool.acquire() as conn, conn.transaction():
        events = await outbox.left_behind(conn, context.catalog, now - OUTBOX_GRACE)
        if events:
            await context.publisher.publish_many(events)
            await outbox.done(conn, [event.id for event in events])
    return len(events)


async def tidy(context: StreamsContext, settings: WebhookSettings, now: datetime) -> None:
    """Gauges and purges."""
    async with context.pool.acquire() as conn:
        for status, count in (await queue.depth(conn)).items():
            QUEUE_DEPTH.labels(status).set(count)
        DISABLED_ENDPOINTS.set(
            await conn.fetchval(
                "SELECT count(*) FROM webhook_subscriptions WHERE NOT enabled AND NOT deleted"
            )
        )
        await queue.purge(conn, now - timedelta(seconds=settings.keep_succeeded))
