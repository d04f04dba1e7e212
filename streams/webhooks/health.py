"""How long each endpoint has been failing without a single success.

An endpoint that has failed continuously for ``disable_after`` (5 days by
default) is disabled, so a dead URL stops costing attempts forever. This
table is the dispatcher's memory of "failing since", one row per failing
endpoint; one success removes it.
"""

from __future__ import annotations

from datetime import datetime

from event_store.migrate import Connection

DDL = """
CREATE TABLE IF NOT EXISTS webhook_endpoint_health (
    tenant_id     text        NOT NULL,
    webhook_id    text        NOT NULL,
    failing_since timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id)
);
"""


async def install(conn: Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhook_endpoint_health'))")
        await conn.execute(DDL)


async def note(
    conn: Connection,
    tenant_id: str,
    webhook_id: str,
    outcomes: list[tuple[datetime, bool]],
) -> datetime | None:
    """Fold attempts' (time, succeeded) into the endpoint's health; returns since when it
    has been failing without a success (None: it is healthy)."""
    outcomes = sorted(outcomes)
    succeeded_at = [at for at, ok in outcomes if ok]
    since_success = [
        at for at, ok in outcomes if not ok and (not succeeded_at or at > succeeded_at[-1])
    ]
    if not since_success:  # healthy now; a healthy endpoint has no row to lock or write
        await conn.execute(
            "DELETE FROM webhook_endpoint_health WHERE tenant_id = $1 AND webhook_id = $2",
            tenant_id,
            webhook_id,
        )
        return None
    return await conn.fetchval(  # type: ignore[no-any-return]
        """
        INSERT INTO webhook_endpoint_health AS h (tenant_id, webhook_id, failing_since)
        VALUES ($1, $2, $3)
        ON CONFLICT (tenant_id, webhook_id) DO UPDATE SET failing_since =
            CASE WHEN $4 THEN EXCLUDED.failing_since
                 ELSE coalesce(h.failing_since, EXCLUDED.failing_since) END
        RETURNING failing_since
        """,
        tenant_id,
        webhook_id,
        since_success[0],
        bool(succeeded_at),
    )
