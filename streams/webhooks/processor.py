"""The webhook processor: matcher and subscription agents, and the dispatcher task.

- ``webhooks-match`` reads every event topic except ``webhooks`` in batches and
  queues the deliveries (``streams.webhooks.matcher``), waking this worker's
  dispatcher when something new is due.
- ``webhooks-subscriptions`` folds ``webhook.subscribed|updated|deleted`` into
  the subscriptions as soon as Kafka has them, so a new endpoint starts
  receiving without waiting for the archive (the projection runner folds the
  same events again, idempotently).
- the dispatcher (``streams.webhooks.dispatcher``) runs as a faust task in
  every worker; the queue in PostgreSQL is shared, so any worker delivers and
  retries anything, including what a killed worker left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

import faust

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.models import Envelope
from schemas.topics import TOPICS, physical_name
from streams.app import StreamsConfig, event_topic
from streams.context import Decide, StreamsContext
from streams.webhooks import health, outbox, queue
from streams.webhooks.deliveries import WebhookDeliveries
from streams.webhooks.dispatcher import Dispatcher
from streams.webhooks.matcher import Matcher
from streams.webhooks.metrics import ERRORS
from streams.webhooks.settings import WebhookSettings, load_webhook_settings
from streams.webhooks.subscriptions import WebhookSubscriptions

log = logging.getLogger("ledgerbus.webhooks")

NAME = "webhooks"
#: The topic of ``webhook.*`` events, which are never delivered themselves.
OWN_TOPIC = "webhooks"
#: Events matched per transaction at most, and how long a batch waits to fill.
MATCH_BATCH = 500
MATCH_WITHIN = 0.002


class WebhookProcessor:
    """Webhook delivery; see the module doc."""

    name = NAME

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        # Read now, so a bad LEDGERBUS_WEBHOOK_* value stops `ledgerbus streams` at once.
        self.settings = settings or load_webhook_settings()
        self.subscriptions = WebhookSubscriptions()
        self.deliveries = WebhookDeliveries()

    @property
    def projections(self) -> Sequence[Projection]:
        return [self.subscriptions, self.deliveries]

    def install(self, app: faust.App, config: StreamsConfig, context: StreamsContext) -> None:
        dispatcher = Dispatcher(context, self.settings)
        matcher = Matcher(context, lambda _: dispatcher.wake())
        tables = Tables(context, self.subscriptions)
        sources = app.topic(
            *(physical_name(topic, config.topic_prefix) for topic in TOPICS if topic != OWN_TOPIC),
            value_type=bytes,
            key_type=bytes,
        )

        @app.agent(sources, name=f"{NAME}-match")
        async def match(stream: faust.StreamT[bytes]) -> None:
            await tables.ready()
            batches = cast(faust.Stream[bytes], stream).take_events(MATCH_BATCH, MATCH_WITHIN)
            async for events in batches:
                await matcher.handle(events)

        @app.agent(event_topic(app, config, OWN_TOPIC), name=f"{NAME}-subscriptions")
        async def follow(stream: faust.StreamT[bytes]) -> None:
            await tables.ready()
            async for event in stream.events():
                if header(event, "ce_type") not in (None, *self.subscriptions.event_types):
                    continue  # mostly delivery attempts: not worth decoding
                envelope = await context.decode(event)
                if envelope is None or envelope.type not in self.subscriptions.event_types:
                    continue
                try:
                    await context.decide(NAME, folding(self.subscriptions, envelope))
                except Exception as exc:  # a bug, not an outage (those are retried)
                    ERRORS.labels("subscriptions").inc()
                    log.exception("webhooks: folding %s %s failed", envelope.type, envelope.id)
                    await context.dead_letter(event, "webhook_subscription_failed", repr(exc))

        async def dispatch() -> None:
            await tables.ready()
            await dispatcher.run()

        app.task(dispatch)


def header(event: faust.EventT[Any], name: str) -> str | None:
    """A Kafka header of the message behind ``event`` (``ce_*`` ones name the event)."""
    headers = event.message.headers or ()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if key == name:
            return bytes(value).decode()
    return None


def folding(projection: Projection, envelope: Envelope[Any]) -> Decide:
    """A decision that only folds ``envelope`` into ``projection`` (nothing to announce)."""

    async def fold(conn: Connection) -> list[Envelope[Any]]:
        await projection.apply(conn, ProjectedEvent(0, envelope))
        return []

    return fold


class Tables:
    """Creates the dispatcher's own tables (and the subscriptions it joins) once per worker,
    before the first agent or task touches them."""

    def __init__(self, context: StreamsContext, subscriptions: WebhookSubscriptions) -> None:
        self.context = context
        self.subscriptions = subscriptions
        self._lock = asyncio.Lock()
        self._done = False

    async def ready(self) -> None:
        async with self._lock:
            if not self._done:
                async with self.context.pool.acquire() as conn:
                    await install(conn, self.subscriptions)
                self._done = True


async def install(conn: Connection, subscriptions: WebhookSubscriptions) -> None:
    """Every table webhook delivery needs (idempotent)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_subscriptions'))")
        await conn.execute(subscriptions.ddl)
    await queue.install(conn)
    await outbox.install(conn)
    await health.install(conn)
