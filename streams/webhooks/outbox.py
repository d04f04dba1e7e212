"""Events decided by the dispatcher, kept until Kafka has confirmed them.

An attempt's outcome is committed to the queue and its events are published
after the commit; a worker killed in between would lose the attempt from the
log. So the events are written here in the same transaction, deleted once
published, and any that a dead worker left behind are published by whichever
worker finds them first (``FOR UPDATE SKIP LOCKED``). Event ids are derived, so
a late second publish is deduplicated by every consumer and the archive.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from event_store.migrate import Connection
from schemas.catalog import EventCatalog
from schemas.models import Envelope

DDL = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   uuid        NOT NULL,
    type       text        NOT NULL,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL
);
"""


async def install(conn: Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_outbox'))")
        await conn.execute(DDL)


async def hold(conn: Connection, events: Sequence[Envelope[Any]], now: datetime) -> None:
    """Keep ``events`` (in order) until ``done`` is called for them."""
    await conn.execute(
        "INSERT INTO webhook_outbox (event_id, type, body, created_at) "
        "SELECT e.id, e.type, e.body, $4 FROM unnest($1::uuid[], $2::text[], $3::text[]) "
        "WITH ORDINALITY AS e(id, type, body, n) ORDER BY e.n",
        [event.id for event in events],
        [event.type for event in events],
        [event.model_dump_json() for event in events],
        now,
    )


async def done(conn: Connection, ids: Sequence[uuid.UUID]) -> None:
    """Forget events Kafka has confirmed."""
    await conn.execute("DELETE FROM webhook_outbox WHERE event_id = ANY($1::uuid[])", list(ids))


async def left_behind(
    conn: Connection, catalog: EventCatalog, before: datetime, limit: int = 500
) -> list[Envelope[Any]]:
    """Events held since before ``before``, oldest first, locked for the caller's
    transaction (publish them, then ``done``, then commit)."""
    rows = await conn.fetch(
        "SELECT type, body FROM webhook_outbox WHERE created_at < $1 ORDER BY seq "
        "LIMIT $2 FOR UPDATE SKIP LOCKED",
        before,
        limit,
    )
    return [
        catalog.get(row["type"]).envelope_model.model_validate_json(row["body"]) for row in rows
    ]
