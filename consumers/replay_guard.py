"""Refuses a sealed message whose event id a recipient has already accepted.

A valid box copied into a new Kafka record (same event id, new offset) is a
replay; the same record delivered again after a crash (same topic, partition
and offset) is not, since consumers are at-least-once. So each accepted id is
stored with the position it was first seen at, in PostgreSQL, where every
process of the recipient shares it.

Receivers refuse boxes sealed outside their time window before asking here,
so rows older than twice the longest window can go (``purge``): a replay of
one would be refused as stale.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

#: Where a record sits in Kafka: topic, partition, offset.
Position = tuple[str, int, int]

_RECORD = """
INSERT INTO agent_messages_seen (tenant_id, recipient, message_id, topic, partition, "offset")
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, recipient, message_id) DO NOTHING
RETURNING true
"""

_FIRST_SEEN_AT = """
SELECT topic, partition, "offset" FROM agent_messages_seen
WHERE tenant_id = $1 AND recipient = $2 AND message_id = $3
"""

_PURGE = """
WITH gone AS (DELETE FROM agent_messages_seen WHERE seen_at < now() - $1::interval RETURNING 1)
SELECT count(*) FROM gone
"""


class ReplayGuard:
    """Accepted message ids per tenant and recipient, in the ``agent_messages_seen`` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def first_sighting(
        self, tenant_id: str, recipient: str, message_id: str, position: Position
    ) -> bool:
        """Record ``message_id`` as seen at ``position``; False if it was already seen
        at another position (a replay), True otherwise (new, or redelivered)."""
        topic, partition, offset = position
        key = (tenant_id, recipient, message_id)
        while True:
            if await self.pool.fetchval(_RECORD, *key, topic, partition, offset):
                return True
            row = await self.pool.fetchrow(_FIRST_SEEN_AT, *key)
            if row is not None:  # else purged in between: record it again
                return (row["topic"], row["partition"], row["offset"]) == position

    async def purge(self, older_than: timedelta) -> int:
        """Forget ids first seen more than ``older_than`` ago (give at least twice the
        longest window receivers accept); returns how many were forgotten."""
        if older_than < timedelta(0):
            raise ValueError(f"older_than must not be negative, not {older_than}")
        forgotten: int = await self.pool.fetchval(_PURGE, older_than)
        return forgotten
