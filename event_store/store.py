"""The event store: PostgreSQL is the system of record; Kafka only distributes.

``append`` archives a batch in one transaction: it locks the head row of every
tenant in the batch (in tenant order, so two appenders never deadlock), drops
events already stored (dedup by event id, checked *after* the locks so a
concurrent appender's commit is visible), gives each remaining event its
tenant's next position, extends the hash chain and writes the rows with COPY.
Different tenants' appends proceed in parallel; the same tenant's serialise.

Reads page by position (keyset pagination), so any history streams through an
async iterator in constant memory without holding a transaction open.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from event_store.chain import GENESIS, link

#: Columns written by COPY, in table order.
_COLUMNS = (
    "tenant_id",
    "position",
    "event_id",
    "type",
    "subject",
    "time",
    "correlation_id",
    "causation_id",
    "schema_id",
    "body",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "prev_hash",
    "hash",
)
_SELECT = ", ".join(_COLUMNS)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to archive: its envelope attributes, schema id and canonical bytes."""

    event_id: uuid.UUID
    tenant_id: str
    type: str
    subject: str
    time: datetime
    schema_id: int
    body: bytes
    correlation_id: str | None = None
    causation_id: str | None = None
    kafka_topic: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An archived event: where it sits in its tenant's chain, and its links."""

    tenant_id: str
    position: int
    event_id: uuid.UUID
    type: str
    subject: str
    time: datetime
    correlation_id: str | None
    causation_id: str | None
    schema_id: int
    body: bytes
    kafka_topic: str | None
    kafka_partition: int | None
    kafka_offset: int | None
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ChainHead:
    tenant_id: str
    position: int
    hash: bytes


@dataclass(frozen=True)
class AppendResult:
    """What one ``append`` did: new rows, skipped duplicates, heads afterwards."""

    appended: int
    duplicates: int
    heads: dict[str, ChainHead] = field(default_factory=dict)


@dataclass(frozen=True)
class EventQuery:
    """Filters for reading one tenant's history; all optional, combined with AND.

    ``types`` are globs (``agent.*``, ``approval.?pproved``); positions are
    inclusive; ``since`` is inclusive and ``until`` exclusive.
    """

    from_position: int = 1
    to_position: int | None = None
    subject: str | None = None
    types: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None


def glob_to_like(pattern: str) -> str:
    """``agent.*`` -> ``agent.%``; LIKE's own wildcards in the glob are matched literally."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


class EventStore:
    """Append and read archived events; takes a pool so callers own its lifetime."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def append(self, events: Iterable[NewEvent]) -> AppendResult:
        given = list(events)
        unique: dict[uuid.UUID, NewEvent] = {}
        for event in given:
            unique.setdefault(event.event_id, event)
        if not unique:
            return AppendResult(appended=0, duplicates=0)
        by_tenant: dict[str, list[NewEvent]] = defaultdict(list)
        for event in unique.values():
            by_tenant[event.tenant_id].append(event)
        tenants = sorted(by_tenant)
        async with self.pool.acquire() as conn, conn.transaction():
            heads = await _lock_heads(conn, tenants)
            stored = await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])", list(unique)
            )
            already = {uuid.UUID(bytes=row["event_id"].bytes) for row in stored}
            rows: list[tuple[Any, ...]] = []
            new_heads: dict[str, ChainHead] = {}
            for tenant in tenants:
                head = heads[tenant]
                position, prev = head.position, head.hash
                for event in by_tenant[tenant]:
                    if event.event_id in already:
                        continue
                    position += 1
                    digest = link(prev, event.body)
                    rows.append(_row(event, position, prev, digest))
                    prev = digest
                new_heads[tenant] = ChainHead(tenant, position, prev)
            if rows:
                await conn.copy_records_to_table("events", records=rows, columns=_COLUMNS)
                changed = [
                    h for h in new_heads.values() if h.position != heads[h.tenant_id].position
                ]
                await conn.execute(
                    """
                    UPDATE chain_heads AS h SET position = v.position, hash = v.hash
                    FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                         AS v(tenant_id, position, hash)
                    WHERE h.tenant_id = v.tenant_id
                    """,
                    [h.tenant_id for h in changed],
                    [h.position for h in changed],
                    [h.hash for h in changed],
                )
        return AppendResult(appended=len(rows), duplicates=len(given) - len(rows), heads=new_heads)

    async def head(self, tenant_id: str) -> ChainHead:
        """The tenant's chain head; position 0 and the genesis hash if it has no events."""
        row = await self.pool.fetchrow(
            "SELECT position, hash FROM chain_heads WHERE tenant_id = $1", tenant_id
        )
        if row is None:
            return ChainHead(tenant_id, 0, GENESIS)
        return ChainHead(tenant_id, row["position"], bytes(row["hash"]))

    async def tenants(self) -> list[str]:
        rows = await self.pool.fetch("SELECT tenant_id FROM chain_heads ORDER BY tenant_id")
        return [row["tenant_id"] for row in rows]

    async def read(
        self, tenant_id: str, query: EventQuery = EventQuery(), *, page_size: int = 1000
    ) -> AsyncIterator[StoredEvent]:
        """The tenant's events matching ``query``, in position order, one page at a time."""
        where, args = _filters(tenant_id, query)
        position = query.from_position - 1
        sql = (
            f"SELECT {_SELECT} FROM events WHERE {' AND '.join(where)} "
            f"AND position > ${len(args) + 1} ORDER BY position LIMIT {int(page_size)}"
        )
        while True:
            rows = await self.pool.fetch(sql, *args, position)
            for row in rows:
                yield _stored(row)
            if len(rows) < page_size:
                return
            position = rows[-1]["position"]

    async def get(self, event_id: uuid.UUID) -> StoredEvent | None:
        row = await self.pool.fetchrow(
            f"SELECT {_SELECT} FROM events WHERE event_id = $1", event_id
        )
        return None if row is None else _stored(row)


async def _lock_heads(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, tenants: list[str]
) -> dict[str, ChainHead]:
    """Create missing head rows, then lock all of them in tenant order."""
    await conn.execute(
        """
        INSERT INTO chain_heads (tenant_id, position, hash)
        SELECT t, 0, $2 FROM unnest($1::text[]) AS t ORDER BY t
        ON CONFLICT (tenant_id) DO NOTHING
        """,
        tenants,
        GENESIS,
    )
    rows = await conn.fetch(
        """
        SELECT tenant_id, position, hash FROM chain_heads
        WHERE tenant_id = ANY($1::text[]) ORDER BY tenant_id FOR UPDATE
        """,
        tenants,
    )
    return {
        row["tenant_id"]: ChainHead(row["tenant_id"], row["position"], bytes(row["hash"]))
        for row in rows
    }


def _row(event: NewEvent, position: int, prev_hash: bytes, digest: bytes) -> tuple[Any, ...]:
    return (
        event.tenant_id,
        position,
        event.event_id,
        event.type,
        event.subject,
        event.time,
        event.correlation_id,
        event.causation_id,
        event.schema_id,
        event.body,
        event.kafka_topic,
        event.kafka_partition,
        event.kafka_offset,
        prev_hash,
        digest,
    )


def _filters(tenant_id: str, query: EventQuery) -> tuple[list[str], list[Any]]:
    where = ["tenant_id = $1"]
    args: list[Any] = [tenant_id]

    def add(condition: str, value: Any) -> None:
        args.append(value)
        where.append(condition.format(f"${len(args)}"))

    if query.to_position is not None:
        add("position <= {}", query.to_position)
    if query.subject is not None:
        add("subject = {}", query.subject)
    if query.types:
        add("type LIKE ANY({}::text[])", [glob_to_like(t) for t in query.types])
    if query.since is not None:
        add("time >= {}", query.since)
    if query.until is not None:
        add("time < {}", query.until)
    if query.correlation_id is not None:
        add("correlation_id = {}", query.correlation_id)
    return where, args


def _stored(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        tenant_id=row["tenant_id"],
        position=row["position"],
        event_id=row["event_id"],
        type=row["type"],
        subject=row["subject"],
        time=row["time"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        schema_id=row["schema_id"],
        body=bytes(row["body"]),
        kafka_topic=row["kafka_topic"],
        kafka_partition=row["kafka_partition"],
        kafka_offset=row["kafka_offset"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )
