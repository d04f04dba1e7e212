"""The ``agent_directory`` projection: each tenant's agents, their public keys and heartbeats.

Senders look up a recipient's current HPKE key here, receivers check a
sender's signing key (issue 7's key directory), and the gateway lists it
(``GET /v1/agents``). Only the projection runner writes it, from the archive,
where events of one agent may sit in any order (registrations and heartbeats
share a topic but not always a partition). So ``apply`` depends only on the
events, in any order, any number of times:

- a key id is bound to the key material of its earliest registration (by
  event time, then id): a later event cannot swap the keys behind a key id;
- the agent's role and current key come from its latest registration;
- a rotation (``previous_key_id``) retires the previous key at the end of its
  grace period, a revocation revokes a key; both keep the earliest time, and
  may arrive before the key itself (the row waits, without key material, for
  its registration);
- each process (``instance_id``) keeps its latest heartbeat.

What is *current* (a key in its grace period, an agent gone quiet) depends
on the clock, so it is computed when reading, never stored.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from consumers.key_directory import KEY_COLUMNS, AgentKey, KeyState, agent_key
from event_store.migrate import Connection
from event_store.projections import ProjectedEvent, Projection
from schemas.models import Envelope
from streams.approvals import MAX_PAGE, Queryable, unstorable

# The key read side lives in consumers.key_directory (agents read it too); the
# directory's readers may keep importing it from here.
__all__ = [
    "HEARTBEAT_STALE_AFTER",
    "Agent",
    "AgentDirectory",
    "AgentInstance",
    "AgentKey",
    "KeyState",
    "agent_key",
    "get_agent",
    "list_agents",
]

#: An agent whose processes have all been silent this long is shown ``offline``.
HEARTBEAT_STALE_AFTER = timedelta(minutes=2)

_BIND_KEY = """
INSERT INTO agent_keys AS k (
    tenant_id, agent_name, key_id, signing_public_key, hpke_public_key, suite,
    registered_at, event_id
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant_id, agent_name, key_id) DO UPDATE SET
    signing_public_key = EXCLUDED.signing_public_key,
    hpke_public_key = EXCLUDED.hpke_public_key,
    suite = EXCLUDED.suite,
    registered_at = EXCLUDED.registered_at,
    event_id = EXCLUDED.event_id
WHERE k.event_id IS NULL
    OR (EXCLUDED.registered_at, EXCLUDED.event_id) < (k.registered_at, k.event_id)
"""

_RETIRE_KEY = """
INSERT INTO agent_keys AS k (tenant_id, agent_name, key_id, retired_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, agent_name, key_id) DO UPDATE SET
    retired_at = LEAST(k.retired_at, EXCLUDED.retired_at)
"""

_REVOKE_KEYS = """
INSERT INTO agent_keys AS k (tenant_id, agent_name, key_id, revoked_at)
SELECT $1, $2, key_id, $4 FROM unnest($3::text[]) AS key_id
ON CONFLICT (tenant_id, agent_name, key_id) DO UPDATE SET
    revoked_at = LEAST(k.revoked_at, EXCLUDED.revoked_at)
"""

_REGISTER_AGENT = """
INSERT INTO agent_directory AS a (
    tenant_id, agent_name, role, current_key_id, updated_at, update_event_id
) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant_id, agent_name) DO UPDATE SET
    role = EXCLUDED.role,
    current_key_id = EXCLUDED.current_key_id,
    updated_at = EXCLUDED.updated_at,
    update_event_id = EXCLUDED.update_event_id
WHERE (EXCLUDED.updated_at, EXCLUDED.update_event_id) > (a.updated_at, a.update_event_id)
"""

_HEARTBEAT = """
INSERT INTO agent_instances AS i (
    tenant_id, agent_name, instance_id, key_id, status, active_runs, last_heartbeat_at,
    heartbeat_event_id
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant_id, agent_name, instance_id) DO UPDATE SET
    key_id = EXCLUDED.key_id,
    status = EXCLUDED.status,
    active_runs = EXCLUDED.active_runs,
    last_heartbeat_at = EXCLUDED.last_heartbeat_at,
    heartbeat_event_id = EXCLUDED.heartbeat_event_id
WHERE (EXCLUDED.last_heartbeat_at, EXCLUDED.heartbeat_event_id)
    > (i.last_heartbeat_at, i.heartbeat_event_id)
"""


class AgentDirectory(Projection):
    name = "agent_directory"
    event_types = ("agent.registered", "agent.heartbeat")
    tables = ("agent_directory", "agent_keys", "agent_instances")
    ddl = """
    CREATE TABLE IF NOT EXISTS agent_directory (
        tenant_id       text        NOT NULL,
        agent_name      text        NOT NULL,
        role            text,
        current_key_id  text        NOT NULL,
        updated_at      timestamptz NOT NULL,
        update_event_id uuid        NOT NULL,
        PRIMARY KEY (tenant_id, agent_name)
    );
    CREATE TABLE IF NOT EXISTS agent_keys (
        tenant_id          text        NOT NULL,
        agent_name         text        NOT NULL,
        key_id             text        NOT NULL,
        signing_public_key bytea,
        hpke_public_key    bytea,
        suite              text,
        registered_at      timestamptz,
        event_id           uuid,
        retired_at         timestamptz,
        revoked_at         timestamptz,
        PRIMARY KEY (tenant_id, agent_name, key_id)
    );
    CREATE TABLE IF NOT EXISTS agent_instances (
        tenant_id          text        NOT NULL,
        agent_name         text        NOT NULL,
        instance_id        text        NOT NULL,
        key_id             text        NOT NULL,
        status             text        NOT NULL,
        active_runs        bigint      NOT NULL,
        last_heartbeat_at  timestamptz NOT NULL,
        heartbeat_event_id uuid        NOT NULL,
        PRIMARY KEY (tenant_id, agent_name, instance_id)
    );
    """

    async def apply(self, conn: Connection, event: ProjectedEvent) -> None:
        envelope = event.envelope
        if unstorable(envelope) is not None:
            return  # text PostgreSQL cannot hold: skipped, so the tenant's projection goes on
        if envelope.type == "agent.registered":
            await _register(conn, envelope)
        elif envelope.type == "agent.heartbeat":
            data = envelope.data
            await conn.execute(
                _HEARTBEAT,
                envelope.tenant_id,
                data.agent_name,
                data.instance_id,
                data.key_id,
                str(data.status),
                data.active_runs,
                envelope.time,
                envelope.id,
            )


async def _register(conn: Connection, envelope: Envelope[Any]) -> None:
    data = envelope.data
    agent = (envelope.tenant_id, data.agent_name)
    await conn.execute(
        _BIND_KEY,
        *agent,
        data.key_id,
        data.signing_public_key,
        data.hpke_public_key,
        str(data.suite),
        envelope.time,
        envelope.id,
    )
    await conn.execute(_REGISTER_AGENT, *agent, data.role, data.key_id, envelope.time, envelope.id)
    if data.previous_key_id is not None:
        # Without a grace period the previous key stops the moment it is replaced.
        until = data.previous_key_valid_until or envelope.time
        await conn.execute(_RETIRE_KEY, *agent, data.previous_key_id, until)
    if data.revoked_key_ids:
        await conn.execute(_REVOKE_KEYS, *agent, data.revoked_key_ids, envelope.time)


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentInstance:
    """One process of an agent, as its latest heartbeat described it."""

    instance_id: str
    key_id: str
    status: str
    active_runs: int
    last_heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent in the directory: its latest registration, keys and processes."""

    agent_name: str
    role: str | None
    current_key_id: str
    updated_at: datetime
    keys: tuple[AgentKey, ...]
    instances: tuple[AgentInstance, ...]

    @property
    def registered_at(self) -> datetime:
        return min((key.registered_at for key in self.keys), default=self.updated_at)

    @property
    def last_heartbeat_at(self) -> datetime | None:
        return max((i.last_heartbeat_at for i in self.instances), default=None)

    def status(self, at: datetime, stale_after: timedelta = HEARTBEAT_STALE_AFTER) -> str:
        """What the most recently heard process reported, or ``offline`` when every
        process has been silent for ``stale_after``."""
        latest = max(self.instances, key=lambda i: i.last_heartbeat_at, default=None)
        if latest is None or at - latest.last_heartbeat_at > stale_after:
            return "offline"
        return latest.status


async def list_agents(
    conn: Queryable, tenant_id: str, *, limit: int = 50, after: str | None = None
) -> list[Agent]:
    """The tenant's agents in name order, ``limit`` after the name ``after``."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    rows = await conn.fetch(
        "SELECT agent_name, role, current_key_id, updated_at FROM agent_directory "
        "WHERE tenant_id = $1 AND ($2::text IS NULL OR agent_name > $2) "
        "ORDER BY agent_name LIMIT $3",
        tenant_id,
        after,
        limit,
    )
    return await _with_keys(conn, tenant_id, rows)


async def get_agent(conn: Queryable, tenant_id: str, agent_name: str) -> Agent | None:
    """The tenant's agent ``agent_name``; None if it never registered."""
    rows = await conn.fetch(
        "SELECT agent_name, role, current_key_id, updated_at FROM agent_directory "
        "WHERE tenant_id = $1 AND agent_name = $2",
        tenant_id,
        agent_name,
    )
    found = await _with_keys(conn, tenant_id, rows)
    return found[0] if found else None


async def _with_keys(conn: Queryable, tenant_id: str, rows: list[asyncpg.Record]) -> list[Agent]:
    names = [row["agent_name"] for row in rows]
    keys: dict[str, list[AgentKey]] = defaultdict(list)
    for row in await conn.fetch(
        f"SELECT {KEY_COLUMNS} FROM agent_keys WHERE tenant_id = $1 AND agent_name = ANY($2) "
        "AND event_id IS NOT NULL ORDER BY registered_at, key_id",
        tenant_id,
        names,
    ):
        keys[row["agent_name"]].append(AgentKey(**dict(row)))
    instances: dict[str, list[AgentInstance]] = defaultdict(list)
    for row in await conn.fetch(
        "SELECT agent_name, instance_id, key_id, status, active_runs, last_heartbeat_at "
        "FROM agent_instances WHERE tenant_id = $1 AND agent_name = ANY($2) "
        "ORDER BY instance_id",
        tenant_id,
        names,
    ):
        fields = dict(row)
        instances[fields.pop("agent_name")].append(AgentInstance(**fields))
    return [
        Agent(
            **dict(row),
            keys=tuple(keys[row["agent_name"]]),
            instances=tuple(instances[row["agent_name"]]),
        )
        for row in rows
    ]
