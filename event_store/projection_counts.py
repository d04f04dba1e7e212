"""``event_counts``: how many events of each type every tenant has, and where they lie.

The smallest real projection; it shows the framework end to end and answers
"what is in this tenant's history" without scanning the archive.
"""

from __future__ import annotations

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection


class EventCounts(Projection):
    name = "event_counts"
    event_types = ("*",)
    tables = ("event_counts",)
    ddl = """
    CREATE TABLE IF NOT EXISTS event_counts (
        tenant_id      text   NOT NULL,
        type           text   NOT NULL,
        count          bigint NOT NULL,
        first_position bigint NOT NULL,
        last_position  bigint NOT NULL,
        PRIMARY KEY (tenant_id, type)
    )
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        await conn.execute(
            """
            INSERT INTO event_counts AS c (tenant_id, type, count, first_position, last_position)
            VALUES ($1, $2, 1, $3, $3)
            ON CONFLICT (tenant_id, type)
            DO UPDATE SET count = c.count + 1, last_position = EXCLUDED.last_position
            """,
            event.envelope.tenant_id,
            event.envelope.type,
            event.position,
        )
