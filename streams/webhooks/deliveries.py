"""``webhook_deliveries``: the delivery log, folded from the attempt events.

``webhook_delivery_attempts`` keeps one row per attempt event (by event id);
``webhook_deliveries`` one row per delivery, whose status is that of its
latest event by (attempt number, kind): a failure, then its dead letter, then
a success rank in that order for the same attempt. Only the events decide
the rows, never the order they are applied in, so the runner, a rebuild and
any replay agree. ``list_deliveries``, ``get_delivery`` and ``attempts_of`` are
what the gateway's delivery-log endpoints read.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from event_store.store import glob_to_like
from schemas.models.webhook import WebhookDeliveryDeadLettered, WebhookDeliveryFailed
from streams.webhooks.storable import storable

SUCCEEDED = "webhook.delivery_succeeded"
FAILED = "webhook.delivery_failed"
DEAD_LETTERED = "webhook.delivery_dead_lettered"

#: (status shown, rank among events of the same attempt)
_KINDS = {FAILED: ("failed", 0), DEAD_LETTERED: ("dead", 1), SUCCEEDED: ("succeeded", 2)}
STATUSES = ("failed", "dead", "succeeded")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as the log shows it."""

    delivery_id: str
    webhook_id: str
    source_event_id: uuid.UUID
    source_event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a delivery."""

    attempt: int
    succeeded: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    response_body: str | None
    at: datetime


class WebhookDeliveries(Projection):
    name = "webhook_deliveries"
    event_types = (SUCCEEDED, FAILED, DEAD_LETTERED)
    tables = ("webhook_deliveries", "webhook_delivery_attempts")
    ddl = """
    CREATE TABLE IF NOT EXISTS webhook_delivery_attempts (
        tenant_id     text        NOT NULL,
        event_id      uuid        NOT NULL,
        delivery_id   text        NOT NULL,
        attempt       integer     NOT NULL,
        succeeded     boolean     NOT NULL,
        status_code   integer,
        latency_ms    bigint      NOT NULL,
        error         text,
        response_body text,
        at            timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, event_id)
    );
    CREATE INDEX IF NOT EXISTS webhook_delivery_attempts_delivery
        ON webhook_delivery_attempts (tenant_id, delivery_id, attempt);
    CREATE TABLE IF NOT EXISTS webhook_deliveries (
        tenant_id         text        NOT NULL,
        delivery_id       text        NOT NULL,
        webhook_id        text        NOT NULL,
        source_event_id   uuid        NOT NULL,
        source_event_type text        NOT NULL,
        status            text        NOT NULL,
        attempts          integer     NOT NULL,
        rank              integer     NOT NULL,
        last_status_code  integer,
        last_error        text,
        last_attempt_at   timestamptz NOT NULL,
        next_attempt_at   timestamptz,
        PRIMARY KEY (tenant_id, delivery_id)
    );
    CREATE INDEX IF NOT EXISTS webhook_deliveries_log
        ON webhook_deliveries (tenant_id, webhook_id, last_attempt_at DESC);
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        data = envelope.data
        status, rank = _KINDS[envelope.type]
        error: str | None = None
        next_at: datetime | None = None
        latency_ms: int | None = None
        response_body: str | None = None
        if isinstance(data, WebhookDeliveryDeadLettered):
            attempt, code, error = data.attempts, data.last_status_code, data.last_error
        else:
            attempt, code = data.attempt, data.status_code
            latency_ms, response_body = data.latency_ms, data.response_body
            if isinstance(data, WebhookDeliveryFailed):
                error, next_at = data.error, data.next_attempt_at
        await conn.execute(
            _APPLY,
            envelope.tenant_id,
            data.delivery_id,
            data.webhook_id,
            data.source_event_id,
            data.source_event_type,
            status,
            attempt,
            rank,
            code,
            storable(error),
            envelope.time,
            next_at,
            envelope.id,
            latency_ms,
            storable(response_body),
        )


#: One round trip per event: the attempt row (dead letters have none), then the
#: delivery row, which only a later (attempt, rank) may overwrite.
_APPLY = """
WITH attempt AS (
    INSERT INTO webhook_delivery_attempts (tenant_id, event_id, delivery_id, attempt,
        succeeded, status_code, latency_ms, error, response_body, at)
    SELECT $1, $13, $2, $7, $6 = 'succeeded', $9, $14, $10, $15, $11
    WHERE $14::bigint IS NOT NULL
    ON CONFLICT DO NOTHING
)
INSERT INTO webhook_deliveries AS d (tenant_id, delivery_id, webhook_id, source_event_id,
    source_event_type, status, attempts, rank, last_status_code, last_error, last_attempt_at,
    next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (tenant_id, delivery_id) DO UPDATE SET status = EXCLUDED.status,
    attempts = EXCLUDED.attempts, rank = EXCLUDED.rank,
    last_status_code = EXCLUDED.last_status_code, last_error = EXCLUDED.last_error,
    last_attempt_at = EXCLUDED.last_attempt_at, next_attempt_at = EXCLUDED.next_attempt_at
WHERE (EXCLUDED.attempts, EXCLUDED.rank) > (d.attempts, d.rank)
"""


async def list_deliveries(
    conn: Connection,
    tenant_id: str,
    webhook_id: str,
    *,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_types: Sequence[str] = (),
    after: tuple[datetime, str] | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """A webhook's deliveries, latest attempt first, optionally by status, by the
    time of the latest attempt (``since`` inclusive, ``until`` exclusive) and by
    source event type (globs). ``after`` is the (last attempt, delivery id) of the
    last delivery of the previous page: the page continues after it."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown delivery status {status!r}; known: {', '.join(STATUSES)}")
    after_at, after_id = after if after is not None else (None, None)
    rows = await conn.fetch(
        """
        SELECT * FROM webhook_deliveries
        WHERE tenant_id = $1 AND webhook_id = $2 AND ($3::text IS NULL OR status = $3)
          AND ($4::timestamptz IS NULL OR last_attempt_at >= $4)
          AND ($5::timestamptz IS NULL OR last_attempt_at < $5)
          AND (cardinality($6::text[]) = 0 OR source_event_type LIKE ANY($6::text[]))
          AND ($7::timestamptz IS NULL OR (last_attempt_at, delivery_id) < ($7, $8::text))
        ORDER BY last_attempt_at DESC, delivery_id DESC LIMIT $9
        """,
        tenant_id,
        webhook_id,
        status,
        since,
        until,
        [glob_to_like(pattern) for pattern in event_types],
        after_at,
        after_id,
        limit,
    )
    return [_delivery(row) for row in rows]


async def get_delivery(conn: Connection, tenant_id: str, delivery_id: str) -> Delivery | None:
    """One delivery of a tenant as the log shows it, or None."""
    row = await conn.fetchrow(
        "SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND delivery_id = $2",
        tenant_id,
        delivery_id,
    )
    return None if row is None else _delivery(row)


async def attempts_of(conn: Connection, tenant_id: str, delivery_id: str) -> list[Attempt]:
    """Every logged attempt of one delivery, in attempt order."""
    rows = await conn.fetch(
        "SELECT attempt, succeeded, status_code, latency_ms, error, response_body, at "
        "FROM webhook_delivery_attempts WHERE tenant_id = $1 AND delivery_id = $2 "
        "ORDER BY attempt, at",
        tenant_id,
        delivery_id,
    )
    return [Attempt(**dict(row)) for row in rows]


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row["delivery_id"],
        row["webhook_id"],
        row["source_event_id"],
        row["source_event_type"],
        row["status"],
        row["attempts"],
        row["last_status_code"],
        row["last_error"],
        row["last_attempt_at"],
        row["next_attempt_at"],
    )
