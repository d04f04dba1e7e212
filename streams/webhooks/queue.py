"""The durable delivery queue: one PostgreSQL row per (endpoint, event), due at a time.

This is the dispatcher's state, so a restart loses no pending retry. The row id
is the delivery id, derived from (webhook id, event id): matching an event
again (redelivery from Kafka, a second worker) never enqueues it twice, and the
same id is sent as ``webhook-id`` on every attempt.

Statuses: ``pending`` (waiting for the first attempt of a round), ``in_flight``
(claimed by a worker until ``lease_until``; a worker that dies leaves it to be
retaken when the lease runs out), ``failed`` (an attempt failed, the next is
due at ``next_attempt_at``), ``succeeded`` and ``dead`` (attempts exhausted;
``redeliver`` starts a new round). Attempt numbers keep counting across rounds
so every attempt event has its own id; ``round_start`` is where the retry
schedule restarts.

Workers claim with ``FOR UPDATE SKIP LOCKED``, so they never wait for or take
each other's rows. A claim takes at most ``concurrency`` attempts per endpoint
counting the ones in flight anywhere, and of an ordered endpoint only its
oldest unfinished delivery, so later ones wait while it is failing (a dead
head no longer holds the line).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from event_store.migrate import Connection
from streams.context import derived_id

PENDING = "pending"
IN_FLIGHT = "in_flight"
FAILED = "failed"
SUCCEEDED = "succeeded"
DEAD = "dead"

DDL = f"""
CREATE TABLE IF NOT EXISTS webhook_queue (
    delivery_id      text        PRIMARY KEY,
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id        text        NOT NULL,
    webhook_id       text        NOT NULL,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    correlation_id   text,
    body             text        NOT NULL,
    status           text        NOT NULL CHECK (status IN
                         ('{PENDING}', '{IN_FLIGHT}', '{FAILED}', '{SUCCEEDED}', '{DEAD}')),
    attempts         integer     NOT NULL DEFAULT 0,
    round_start      integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    lease_token      uuid,
    lease_until      timestamptz,
    last_status_code integer,
    last_error       text,
    last_attempt_at  timestamptz,
    enqueued_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_queue_due ON webhook_queue (next_attempt_at)
    WHERE status IN ('{PENDING}', '{FAILED}');
CREATE INDEX IF NOT EXISTS webhook_queue_leased ON webhook_queue (lease_until)
    WHERE status = '{IN_FLIGHT}';
CREATE INDEX IF NOT EXISTS webhook_queue_line ON webhook_queue (tenant_id, webhook_id, seq)
    WHERE status IN ('{PENDING}', '{FAILED}', '{IN_FLIGHT}');
CREATE INDEX IF NOT EXISTS webhook_queue_failures ON webhook_queue (tenant_id, last_attempt_at)
    WHERE status IN ('{FAILED}', '{DEAD}');
CREATE INDEX IF NOT EXISTS webhook_queue_done ON webhook_queue (last_attempt_at)
    WHERE status = '{SUCCEEDED}';
"""

#: A row an attempt may be made for now ($1 = now).
_DUE = f"""(q.status IN ('{PENDING}', '{FAILED}') AND q.next_attempt_at <= $1
            OR q.status = '{IN_FLIGHT}' AND q.lease_until <= $1)"""

_CLAIM = f"""
WITH busy AS (
    SELECT tenant_id, webhook_id, count(*) AS n FROM webhook_queue
    WHERE status = '{IN_FLIGHT}' AND lease_until > $1 AND delivery_id <> ALL($6::text[])
    GROUP BY tenant_id, webhook_id
), due AS (
    SELECT q.delivery_id, q.next_attempt_at, q.seq, coalesce(b.n, 0) AS busy,
           row_number() OVER (PARTITION BY q.tenant_id, q.webhook_id ORDER BY q.seq) AS rank
    FROM webhook_queue q
    JOIN webhook_subscriptions s ON s.tenant_id = q.tenant_id AND s.webhook_id = q.webhook_id
    LEFT JOIN busy b ON b.tenant_id = q.tenant_id AND b.webhook_id = q.webhook_id
    WHERE s.enabled AND NOT s.deleted AND {_DUE}
      AND (NOT s.ordered OR q.seq = (
          SELECT min(h.seq) FROM webhook_queue h
          WHERE h.tenant_id = q.tenant_id AND h.webhook_id = q.webhook_id
            AND h.status IN ('{PENDING}', '{FAILED}', '{IN_FLIGHT}')))
), chosen AS (
    SELECT delivery_id FROM due WHERE rank + busy <= $2 ORDER BY next_attempt_at, seq LIMIT $3
), picked AS (
    SELECT q.delivery_id FROM webhook_queue q
    WHERE q.delivery_id IN (SELECT delivery_id FROM chosen) AND {_DUE}
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE webhook_queue q SET status = '{IN_FLIGHT}', lease_token = $4, lease_until = $5
FROM picked, webhook_subscriptions s
WHERE q.delivery_id = picked.delivery_id
  AND s.tenant_id = q.tenant_id AND s.webhook_id = q.webhook_id
RETURNING q.delivery_id, q.tenant_id, q.webhook_id, q.body, q.attempts, s.url, s.secret
"""


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """An event matched to an endpoint, with the body every attempt will send."""

    tenant_id: str
    webhook_id: str
    event_id: uuid.UUID
    event_type: str
    correlation_id: str | None
    body: str

    @property
    def delivery_id(self) -> str:
        return delivery_id(self.webhook_id, self.event_id)


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery this worker may attempt until its lease ends."""

    delivery_id: str
    tenant_id: str
    webhook_id: str
    body: str
    attempt: int
    url: str
    secret: str
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Leased:
    """A claimed row, locked for recording an attempt's outcome."""

    delivery_id: str
    tenant_id: str
    webhook_id: str
    event_id: uuid.UUID
    event_type: str
    correlation_id: str | None
    attempts: int
    round_start: int
    lease_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Update:
    """A delivery's state after an attempt."""

    delivery_id: str
    status: str
    attempt: int
    next_attempt_at: datetime | None
    status_code: int | None
    error: str | None
    attempted_at: datetime


def delivery_id(webhook_id: str, event_id: uuid.UUID) -> str:
    """The stable id of delivering one event to one endpoint (the ``webhook-id`` header)."""
    return str(derived_id(event_id, f"webhook-delivery/{webhook_id}"))


async def install(conn: Connection) -> None:
    """Create the queue (idempotent; an advisory lock keeps concurrent creators apart)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_queue'))")
        await conn.execute(DDL)


async def enqueue(conn: Connection, deliveries: Sequence[NewDelivery], now: datetime) -> int:
    """Queue new deliveries, due now, in the given order; returns how many were new."""
    if not deliveries:
        return 0
    status = await conn.execute(
        f"""
        INSERT INTO webhook_queue (delivery_id, tenant_id, webhook_id, event_id, event_type,
            correlation_id, body, status, next_attempt_at, enqueued_at)
        SELECT d.delivery_id, d.tenant_id, d.webhook_id, d.event_id, d.event_type,
               d.correlation_id, d.body, '{PENDING}', $8, $8
        FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                    $7::text[]) WITH ORDINALITY
            AS d(delivery_id, tenant_id, webhook_id, event_id, event_type, correlation_id, body, n)
        ORDER BY d.n
        ON CONFLICT (delivery_id) DO NOTHING
        """,
        [d.delivery_id for d in deliveries],
        [d.tenant_id for d in deliveries],
        [d.webhook_id for d in deliveries],
        [d.event_id for d in deliveries],
        [d.event_type for d in deliveries],
        [d.correlation_id for d in deliveries],
        [d.body for d in deliveries],
        now,
    )
    return int(status.split()[-1])


async def claim(
    conn: Connection,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    per_endpoint: int,
    answered: Sequence[str] = (),
) -> list[Claim]:
    """Lease up to ``limit`` due deliveries to the caller (one token for the batch).

    ``answered`` are the caller's in-flight deliveries whose attempt is over but not
    yet recorded: they no longer hold one of their endpoint's ``per_endpoint`` slots.
    """
    token = uuid.uuid4()
    rows = await conn.fetch(_CLAIM, now, per_endpoint, limit, token, lease_until, list(answered))
    return [
        Claim(
            r["delivery_id"],
            r["tenant_id"],
            r["webhook_id"],
            r["body"],
            r["attempts"] + 1,
            r["url"],
            r["secret"],
            token,
        )
        for r in rows
    ]


async def lock_leased(conn: Connection, ids: Sequence[str]) -> dict[str, Leased]:
    """The in-flight rows among ``ids``, locked in id order (so lockers never deadlock)."""
    rows = await conn.fetch(
        f"""
        SELECT delivery_id, tenant_id, webhook_id, event_id, event_type, correlation_id,
               attempts, round_start, lease_token
        FROM webhook_queue WHERE delivery_id = ANY($1::text[]) AND status = '{IN_FLIGHT}'
        ORDER BY delivery_id FOR UPDATE
        """,
        list(ids),
    )
    return {row["delivery_id"]: Leased(**dict(row)) for row in rows}


async def record(conn: Connection, updates: Sequence[Update]) -> None:
    """Store attempts' outcomes and release their leases."""
    await conn.execute(
        """
        UPDATE webhook_queue q SET status = u.status, attempts = u.attempt,
            next_attempt_at = coalesce(u.next_attempt_at, q.next_attempt_at),
            last_status_code = u.status_code, last_error = u.error,
            last_attempt_at = u.attempted_at, lease_token = NULL, lease_until = NULL
        FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::int[],
                    $6::text[], $7::timestamptz[])
            AS u(delivery_id, status, attempt, next_attempt_at, status_code, error, attempted_at)
        WHERE q.delivery_id = u.delivery_id
        """,
        [u.delivery_id for u in updates],
        [u.status for u in updates],
        [u.attempt for u in updates],
        [u.next_attempt_at for u in updates],
        [u.status_code for u in updates],
        [u.error for u in updates],
        [u.attempted_at for u in updates],
    )


async def release(conn: Connection, tokens: Sequence[uuid.UUID], now: datetime) -> int:
    """Give back leases a stopping worker will not use: due again at once."""
    status = await conn.execute(
        f"""
        UPDATE webhook_queue SET lease_token = NULL, lease_until = NULL, next_attempt_at = $2,
            status = CASE WHEN attempts = round_start THEN '{PENDING}' ELSE '{FAILED}' END
        WHERE lease_token = ANY($1::uuid[]) AND status = '{IN_FLIGHT}'
        """,
        list(tokens),
        now,
    )
    return int(status.split()[-1])


async def redeliver(
    conn: Connection,
    tenant_id: str,
    now: datetime,
    *,
    delivery: str | None = None,
    failed_since: datetime | None = None,
    webhook_id: str | None = None,
) -> int:
    """Start a new round of attempts, due now, for a tenant's failed or dead deliveries
    (one, or all whose last attempt was at or after ``failed_since``; of one endpoint
    if ``webhook_id`` is given); returns how many."""
    status = await conn.execute(
        f"""
        UPDATE webhook_queue SET status = '{PENDING}', next_attempt_at = $2,
            round_start = attempts, lease_token = NULL, lease_until = NULL
        WHERE tenant_id = $1 AND status IN ('{FAILED}', '{DEAD}')
          AND ($3::text IS NULL OR delivery_id = $3)
          AND ($4::timestamptz IS NULL OR last_attempt_at >= $4)
          AND ($5::text IS NULL OR webhook_id = $5)
        """,
        tenant_id,
        now,
        delivery,
        failed_since,
        webhook_id,
    )
    return int(status.split()[-1])


async def status_of(conn: Connection, tenant_id: str, delivery: str) -> tuple[str, str] | None:
    """(webhook id, status) of a tenant's queued delivery, or None if it is not queued."""
    row = await conn.fetchrow(
        "SELECT webhook_id, status FROM webhook_queue WHERE tenant_id = $1 AND delivery_id = $2",
        tenant_id,
        delivery,
    )
    return None if row is None else (row["webhook_id"], row["status"])


async def depth(conn: Connection) -> dict[str, int]:
    """Deliveries per unfinished status (for the queue-depth gauge)."""
    rows = await conn.fetch(
        f"SELECT status, count(*) AS n FROM webhook_queue "
        f"WHERE status IN ('{PENDING}', '{FAILED}', '{IN_FLIGHT}') GROUP BY status"
    )
    found = {row["status"]: row["n"] for row in rows}
    return {status: found.get(status, 0) for status in (PENDING, FAILED, IN_FLIGHT)}


async def purge(conn: Connection, succeeded_before: datetime) -> int:
    """Forget old successes, and the waiting deliveries of deleted endpoints (their dead
    ones stay, as the record of what was never delivered)."""
    old = await conn.execute(
        f"DELETE FROM webhook_queue WHERE status = '{SUCCEEDED}' AND last_attempt_at < $1",
        succeeded_before,
    )
    orphaned = await conn.execute(
        f"""
        DELETE FROM webhook_queue q USING webhook_subscriptions s
        WHERE s.tenant_id = q.tenant_id AND s.webhook_id = q.webhook_id AND s.deleted
          AND q.status IN ('{PENDING}', '{FAILED}')
        """
    )
    return int(old.split()[-1]) + int(orphaned.split()[-1])
