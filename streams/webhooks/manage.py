"""Managing webhook endpoints: what ``ledgerbus webhooks`` and the gateway's ``/v1/webhooks`` share.

Every change to an endpoint is an event (``webhook.subscribed|updated|deleted``)
built here, after the checks that would otherwise only fail later, attempt by
attempt: the SSRF guard on the URL (checked again before every attempt, since
DNS answers change) and type globs that match at least one event type that can
be delivered. A test ping is sent like any attempt and recorded as one
(``webhook.delivery_succeeded|failed`` of a ``webhook.ping``), so it shows in
the delivery log and the audit history. Redelivery starts a new round of
attempts in the queue, under the same delivery id.

``fold`` applies a change to the projections at once, where the writer wants
to read its own write (the gateway answers with the endpoint it just changed);
the projections fold each event once, by id, in event-time order, so the
stream processors folding it again later changes nothing.
"""

from __future__ import annotations

import difflib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from producers.publisher import build_event
from schemas.catalog import EventCatalog
from schemas.models import Envelope
from streams.webhooks import queue
from streams.webhooks.deliveries import FAILED, SUCCEEDED, WebhookDeliveries
from streams.webhooks.matcher import NEVER_MATCHED
from streams.webhooks.policy import Result
from streams.webhooks.sending import Signed, http_client, send
from streams.webhooks.settings import WebhookSettings
from streams.webhooks.signing import new_secret
from streams.webhooks.ssrf import SsrfGuard
from streams.webhooks.subscriptions import (
    DELETED,
    SUBSCRIBED,
    UPDATED,
    Subscription,
    WebhookSubscriptions,
)

#: ``source_event_type`` of test pings in the delivery log.
PING = "webhook.ping"

_PROJECTIONS: tuple[Projection, ...] = (WebhookSubscriptions(), WebhookDeliveries())


class InvalidSubscription(ValueError):
    """Event type globs that are missing or can never match a deliverable event."""


class NothingToRedeliver(LookupError):
    """The named delivery cannot be redelivered; see the subclasses."""


class UnknownDelivery(NothingToRedeliver):
    """No such delivery in the queue (of the tenant, or of the endpoint named)."""


class NotFailed(NothingToRedeliver):
    """The delivery is queued but has not failed: pending, in flight or succeeded."""


def check_globs(catalog: EventCatalog, patterns: Sequence[str]) -> list[str]:
    """``patterns`` if each one matches some event type that webhooks deliver."""
    if not patterns:
        raise InvalidSubscription("give at least one event type glob, e.g. 'agent.*'")
    deliverable = [t.name for t in catalog if not t.name.startswith(NEVER_MATCHED)]
    for pattern in patterns:
        if not pattern.strip():
            raise InvalidSubscription("event type globs must not be empty")
        if not any(fnmatchcase(name, pattern) for name in deliverable):
            close = difflib.get_close_matches(pattern, deliverable, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InvalidSubscription(
                f"event type glob {pattern!r} matches no event type webhooks deliver{hint}"
            )
    return list(patterns)


async def subscription(
    catalog: EventCatalog,
    guard: SsrfGuard,
    *,
    tenant_id: str,
    url: str,
    event_types: Sequence[str],
    source: str,
    ordered: bool = False,
    description: str | None = None,
) -> Envelope[Any]:
    """The ``webhook.subscribed`` of a new endpoint, with a fresh id and signing secret."""
    globs = check_globs(catalog, event_types)
    await guard.check(url)
    webhook_id = f"wh_{uuid.uuid4().hex}"
    return build_event(
        catalog.get(SUBSCRIBED),
        subject=webhook_id,
        tenant_id=tenant_id,
        data={
            "webhook_id": webhook_id,
            "url": url,
            "event_types": globs,
            "secret": new_secret(),
            "ordered": ordered,
            "description": description,
        },
        source=source,
    )


async def update(
    catalog: EventCatalog,
    guard: SsrfGuard,
    *,
    tenant_id: str,
    webhook_id: str,
    source: str,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    enabled: bool | None = None,
    ordered: bool | None = None,
) -> Envelope[Any]:
    """The ``webhook.updated`` changing the given fields (None = unchanged)."""
    changes: dict[str, Any] = {"url": url, "enabled": enabled, "ordered": ordered}
    if event_types is not None:
        changes["event_types"] = check_globs(catalog, event_types)
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        raise InvalidSubscription("nothing to change: give url, event_types, enabled or ordered")
    if url is not None:
        await guard.check(url)
    return build_event(
        catalog.get(UPDATED),
        subject=webhook_id,
        tenant_id=tenant_id,
        data={"webhook_id": webhook_id, **changes},
        source=source,
    )


def deletion(
    catalog: EventCatalog, *, tenant_id: str, webhook_id: str, source: str
) -> Envelope[Any]:
    """The ``webhook.deleted`` of an endpoint (final: its waiting deliveries are dropped)."""
    return build_event(
        catalog.get(DELETED),
        subject=webhook_id,
        tenant_id=tenant_id,
        data={"webhook_id": webhook_id},
        source=source,
    )


@dataclass(frozen=True, slots=True)
class Pinged:
    """A test ping's outcome, and the attempt event that records it."""

    delivery_id: str
    result: Result
    error: str | None
    event: Envelope[Any]


async def ping(
    catalog: EventCatalog,
    settings: WebhookSettings,
    endpoint: Subscription,
    secret: str,
    *,
    source: str,
) -> Pinged:
    """POST a signed ``webhook.ping`` CloudEvent to the endpoint, once, as an attempt would."""
    ping_id = uuid.uuid4()
    delivery_id = queue.delivery_id(endpoint.webhook_id, ping_id)
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": str(ping_id),
            "source": source,
            "type": PING,
            "subject": endpoint.webhook_id,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "tenantid": endpoint.tenant_id,
            "data": {"webhook_id": endpoint.webhook_id, "message": "test ping from ledgerbus"},
        },
        separators=(",", ":"),
    )
    guard = SsrfGuard(settings.allowed_networks, settings.allowed_hosts)
    async with http_client(settings, 1) as client:
        result = await send(
            client, guard, settings, Signed(endpoint.url, secret, delivery_id, body)
        )
    data: dict[str, Any] = {
        "delivery_id": delivery_id,
        "webhook_id": endpoint.webhook_id,
        "source_event_id": ping_id,
        "source_event_type": PING,
        "attempt": 1,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "response_body": result.response_body,
    }
    error = None if result.succeeded else result.error or f"answered {result.status_code}"
    if error is not None:
        data["error"] = error
    event = build_event(
        catalog.get(SUCCEEDED if result.succeeded else FAILED),
        subject=endpoint.webhook_id,
        tenant_id=endpoint.tenant_id,
        data=data,
        source=source,
    )
    return Pinged(delivery_id, result, error, event)


async def redeliver(
    conn: Connection,
    tenant_id: str,
    *,
    delivery: str | None = None,
    failed_since: datetime | None = None,
    webhook_id: str | None = None,
) -> int:
    """Queue failed or dead deliveries again, due now (one, or all of the tenant or of
    ``webhook_id`` whose last attempt was at or after ``failed_since``); returns how many.

    A named delivery that cannot be redelivered raises ``UnknownDelivery`` or ``NotFailed``.
    """
    count = await queue.redeliver(
        conn,
        tenant_id,
        datetime.now(UTC),
        delivery=delivery,
        failed_since=failed_since,
        webhook_id=webhook_id,
    )
    if delivery is not None and count == 0:
        found = await queue.status_of(conn, tenant_id, delivery)
        if found is None or webhook_id not in (None, found[0]):
            raise UnknownDelivery(f"delivery {delivery} of tenant {tenant_id} does not exist")
        raise NotFailed(
            f"delivery {delivery} is {found[1]}: only failed or dead deliveries are redelivered"
        )
    return count


async def install(conn: Connection) -> None:
    """The tables managing reads and writes: subscriptions, delivery log, queue (idempotent;
    each under the advisory lock its other creators take)."""
    for projection in _PROJECTIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", projection.name)
            await conn.execute(projection.ddl)
    await queue.install(conn)


async def fold(conn: Connection, event: Envelope[Any]) -> None:
    """Apply a ``webhook.*`` event to the projections now (see the module doc)."""
    for projection in _PROJECTIONS:
        if event.type in projection.event_types:
            async with conn.transaction():
                await projection.apply(conn, ProjectedEvent(0, event))


async def find(conn: Connection, tenant_id: str, webhook_id: str) -> Subscription | None:
    """A tenant's endpoint unless deleted (another tenant's id is simply not found)."""
    row = await conn.fetchrow(
        "SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2 "
        "AND NOT deleted",
        tenant_id,
        webhook_id,
    )
    return None if row is None else Subscription.from_row(row)


async def signing_secret(conn: Connection, endpoint: Subscription) -> str:
    """The endpoint's current signing secret (never shown after creation, only used)."""
    secret: str = await conn.fetchval(
        "SELECT secret FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2",
        endpoint.tenant_id,
        endpoint.webhook_id,
    )
    return secret
