"""Read side of the key directory: agents' registered keys, as senders and receivers need them.

The ``agent_directory`` projection (``streams.agent_directory``) writes the
tables from ``agent.registered`` events; this module only reads them. A
sender looks up its recipient's current HPKE key, a receiver the signing key
a box names, on every message, so ``KeyDirectory`` keeps answers for a short
while: a rotation or revocation reaches a consumer at most ``ttl`` late.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from event_store.migrate import Connection


class KeyState(StrEnum):
    CURRENT = "current"
    #: Rotated out, still opening boxes sealed to it until ``retired_at``.
    GRACE = "grace"
    RETIRED = "retired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class AgentKey:
    """One registered key pair of an agent, and what happened to it since."""

    agent_name: str
    key_id: str
    signing_public_key: bytes
    hpke_public_key: bytes
    suite: str
    registered_at: datetime
    event_id: uuid.UUID
    """The registration that bound the key id to these keys."""
    retired_at: datetime | None
    revoked_at: datetime | None

    def state(self, current_key_id: str, at: datetime) -> KeyState:
        """The key's state at ``at``; a revocation counts at once, whatever its time."""
        if self.revoked_at is not None:
            return KeyState.REVOKED
        if self.key_id == current_key_id:  # even if once rotated out: registered again since
            return KeyState.CURRENT
        if self.retired_at is not None:
            return KeyState.GRACE if at < self.retired_at else KeyState.RETIRED
        return KeyState.RETIRED  # replaced without a rotation note: no grace was announced


#: The ``agent_keys`` columns an ``AgentKey`` is built from, in its field order.
KEY_COLUMNS = """
agent_name, key_id, signing_public_key, hpke_public_key, suite, registered_at, event_id,
retired_at, revoked_at
"""


async def agent_key(
    conn: Connection | asyncpg.Pool, tenant_id: str, agent_name: str, key_id: str
) -> AgentKey | None:
    """The key ``key_id`` of an agent, if one was registered under that id."""
    row = await conn.fetchrow(
        f"SELECT {KEY_COLUMNS} FROM agent_keys WHERE tenant_id = $1 AND agent_name = $2 "
        "AND key_id = $3 AND event_id IS NOT NULL",
        tenant_id,
        agent_name,
        key_id,
    )
    return None if row is None else AgentKey(**dict(row))


async def current_key(
    conn: Connection | asyncpg.Pool, tenant_id: str, agent_name: str
) -> AgentKey | None:
    """The key of the agent's latest registration (even if since revoked: check
    ``revoked_at``); None if the agent never registered."""
    row = await conn.fetchrow(
        f"SELECT {KEY_COLUMNS} FROM agent_keys WHERE tenant_id = $1 AND agent_name = $2 "
        "AND event_id IS NOT NULL AND key_id = ("
        "SELECT current_key_id FROM agent_directory WHERE tenant_id = $1 AND agent_name = $2)",
        tenant_id,
        agent_name,
    )
    return None if row is None else AgentKey(**dict(row))


class KeyDirectory:
    """Key lookups over a pool, each answer (a miss too) kept for ``ttl`` seconds.

    At most ``max_entries`` answers are kept, the oldest dropped first, so key
    ids made up by senders cannot grow the cache without bound.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl: float = 2.0,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        # (tenant, agent, key id) -> (expiry, answer); key id None: the current key.
        self._cached: dict[tuple[str, str, str | None], tuple[float, AgentKey | None]] = {}

    async def signing_key(self, tenant_id: str, agent_name: str, key_id: str) -> AgentKey | None:
        """The agent's key pair registered as ``key_id`` (its Ed25519 key checks
        signatures; ``revoked_at``/``retired_at`` say whether it still may)."""
        cache_key = (tenant_id, agent_name, key_id)
        found = self._fresh(cache_key)
        if found is None:
            found = self._keep(cache_key, await agent_key(self.pool, tenant_id, agent_name, key_id))
        return found[1]

    async def current_key(self, tenant_id: str, agent_name: str) -> AgentKey | None:
        """The agent's current key pair, the one to seal to; None if it never registered."""
        cache_key = (tenant_id, agent_name, None)
        found = self._fresh(cache_key)
        if found is None:
            found = self._keep(cache_key, await current_key(self.pool, tenant_id, agent_name))
        return found[1]

    def forget(self, tenant_id: str, agent_name: str) -> None:
        """Drop every cached answer about the agent: the next lookup reads the tables."""
        for cache_key in [k for k in self._cached if k[:2] == (tenant_id, agent_name)]:
            del self._cached[cache_key]

    def _fresh(
        self, cache_key: tuple[str, str, str | None]
    ) -> tuple[float, AgentKey | None] | None:
        found = self._cached.get(cache_key)
        if found is not None and self._clock() < found[0]:
            return found
        return None

    def _keep(
        self, cache_key: tuple[str, str, str | None], key: AgentKey | None
    ) -> tuple[float, AgentKey | None]:
        self._cached.pop(cache_key, None)  # re-inserted last: the newest answer
        while len(self._cached) >= self.max_entries:
            del self._cached[next(iter(self._cached))]
        entry = (self._clock() + self.ttl, key)
        self._cached[cache_key] = entry
        return entry
