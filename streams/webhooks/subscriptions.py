"""``webhook_subscriptions``: the endpoints of every tenant, folded from ``webhook.*`` events.

Every subscribed/updated/deleted event is kept in ``webhook_subscription_changes``
(once, by event id) and the endpoint's row is recomputed from all of its
changes in (event time, event id) order: last writer wins per field, and the
result does not depend on the order the events arrived in, so the live
processor, the projection runner and a rebuild all end with the same row.
A deletion is final. Webhook ids are scoped by tenant: another tenant's event
naming the same id changes nothing here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

import asyncpg

from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from streams.webhooks.storable import storable

SUBSCRIBED = "webhook.subscribed"
UPDATED = "webhook.updated"
DELETED = "webhook.deleted"

_FIELDS = ("url", "event_types", "secret", "ordered", "enabled", "description", "reason")


@dataclass(frozen=True, slots=True)
class Subscription:
    """An endpoint as the matcher and the dispatcher see it."""

    tenant_id: str
    webhook_id: str
    url: str
    event_types: tuple[str, ...]
    ordered: bool
    enabled: bool
    reason: str | None
    description: str | None
    deleted: bool

    def matches(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this endpoint (type globs, as ``fnmatch``)."""
        return any(fnmatchcase(event_type, pattern) for pattern in self.event_types)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Subscription:
        return cls(
            row["tenant_id"],
            row["webhook_id"],
            row["url"],
            tuple(row["event_types"]),
            row["ordered"],
            row["enabled"],
            row["reason"],
            row["description"],
            row["deleted"],
        )


class WebhookSubscriptions(Projection):
    name = "webhook_subscriptions"
    event_types = (SUBSCRIBED, UPDATED, DELETED)
    tables = ("webhook_subscriptions", "webhook_subscription_changes")
    ddl = """
    CREATE TABLE IF NOT EXISTS webhook_subscription_changes (
        tenant_id  text        NOT NULL,
        webhook_id text        NOT NULL,
        event_id   uuid        NOT NULL,
        time       timestamptz NOT NULL,
        type       text        NOT NULL,
        change     jsonb       NOT NULL,
        PRIMARY KEY (tenant_id, webhook_id, event_id)
    );
    CREATE TABLE IF NOT EXISTS webhook_subscriptions (
        tenant_id   text        NOT NULL,
        webhook_id  text        NOT NULL,
        url         text        NOT NULL,
        event_types text[]      NOT NULL,
        secret      text        NOT NULL,
        ordered     boolean     NOT NULL,
        enabled     boolean     NOT NULL,
        description text,
        reason      text,
        deleted     boolean     NOT NULL,
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, webhook_id)
    );
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        tenant_id, webhook_id = envelope.tenant_id, envelope.data.webhook_id
        added = await conn.execute(
            "INSERT INTO webhook_subscription_changes "
            "(tenant_id, webhook_id, event_id, time, type, change) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING",
            tenant_id,
            webhook_id,
            envelope.id,
            envelope.time,
            envelope.type,
            json.dumps(storable(envelope.data.model_dump(mode="json", exclude_none=True))),
        )
        if added == "INSERT 0 0":  # seen before: the row already reflects it
            return
        changes = await conn.fetch(
            "SELECT time, type, change FROM webhook_subscription_changes "
            "WHERE tenant_id = $1 AND webhook_id = $2 ORDER BY time, event_id",
            tenant_id,
            webhook_id,
        )
        state = fold((row["time"], row["type"], json.loads(row["change"])) for row in changes)
        if state is None:
            await conn.execute(
                "DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2",
                tenant_id,
                webhook_id,
            )
            return
        await conn.execute(
            """
            INSERT INTO webhook_subscriptions AS s (tenant_id, webhook_id, url, event_types,
                secret, ordered, enabled, description, reason, deleted, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT (tenant_id, webhook_id) DO UPDATE SET url = EXCLUDED.url,
                event_types = EXCLUDED.event_types, secret = EXCLUDED.secret,
                ordered = EXCLUDED.ordered, enabled = EXCLUDED.enabled,
                description = EXCLUDED.description, reason = EXCLUDED.reason,
                deleted = EXCLUDED.deleted, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at
            """,
            tenant_id,
            webhook_id,
            state["url"],
            state["event_types"],
            state["secret"],
            state["ordered"],
            state["enabled"],
            state["description"],
            state["reason"],
            state["deleted"],
            state["created_at"],
            state["updated_at"],
        )


def fold(changes: Iterable[tuple[datetime, str, dict[str, Any]]]) -> dict[str, Any] | None:
    """An endpoint's state after its changes (in order), or None before it is subscribed."""
    state: dict[str, Any] | None = None
    for time, kind, change in changes:
        if state is not None and state["deleted"]:
            break
        if kind == SUBSCRIBED:
            state = {"ordered": False, "enabled": True, "description": None, "reason": None}
            state.update({key: change[key] for key in _FIELDS if key in change})
            state.update(deleted=False, created_at=time)
        elif state is None:
            continue
        elif kind == UPDATED:
            if "enabled" in change:  # a new enabled flag comes with its own reason, or none
                state["reason"] = None
            state.update({key: change[key] for key in _FIELDS if key in change})
        else:
            state["deleted"] = True
        state["updated_at"] = time
    return state


async def active(conn: Connection, tenants: Sequence[str]) -> dict[str, list[Subscription]]:
    """The enabled, undeleted endpoints of ``tenants``, by tenant."""
    rows = await conn.fetch(
        "SELECT * FROM webhook_subscriptions WHERE tenant_id = ANY($1::text[]) "
        "AND enabled AND NOT deleted",
        list(tenants),
    )
    found: dict[str, list[Subscription]] = {}
    for row in rows:
        found.setdefault(row["tenant_id"], []).append(Subscription.from_row(row))
    return found


async def of_tenant(conn: Connection, tenant_id: str) -> list[Subscription]:
    """Every undeleted endpoint of a tenant, oldest first (for listings)."""
    rows = await conn.fetch(
        "SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND NOT deleted "
        "ORDER BY created_at, webhook_id",
        tenant_id,
    )
    return [Subscription.from_row(row) for row in rows]


async def locked(conn: Connection, tenant_id: str, webhook_id: str) -> Subscription | None:
    """The endpoint, row-locked until the transaction ends (to decide on disabling it once)."""
    row = await conn.fetchrow(
        "SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND webhook_id = $2 FOR UPDATE",
        tenant_id,
        webhook_id,
    )
    return None if row is None else Subscription.from_row(row)
