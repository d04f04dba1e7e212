"""Agents' keys as the directory shows them: registrations, and projecting them for real."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from consumers.identity import AgentIdentity
from consumers.key_directory import AgentKey
from event_store.projections import ProjectionRunner
from event_store.store import EventStore
from producers.publisher import build_event
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.registry_client import RegistryClient
from schemas.serde import EventDeserializer, EventSerializer
from streams.agent_directory import AgentDirectory
from tests.support.archived import archive

CATALOG = default_catalog()
GRACE = timedelta(hours=1)


def registered(
    identity: AgentIdentity,
    tenant_id: str,
    at: datetime,
    *,
    grace: timedelta = GRACE,
    revoked_key_ids: Sequence[str] = (),
) -> Envelope[Any]:
    """The ``agent.registered`` event publishing ``identity``'s current keys at ``at``."""
    data = {**identity.registration(grace), "revoked_key_ids": list(revoked_key_ids)}
    event = build_event(
        CATALOG.get("agent.registered"),
        subject=identity.agent_name,
        tenant_id=tenant_id,
        data=data,
        source="test",
    )
    return event.model_copy(update={"time": at})


def published_key(
    identity: AgentIdentity,
    at: datetime,
    *,
    retired_at: datetime | None = None,
    revoked_at: datetime | None = None,
) -> AgentKey:
    """``identity``'s current keys as the directory holds them once registered at ``at``."""
    data = identity.registration(GRACE)
    return AgentKey(
        agent_name=identity.agent_name,
        key_id=data["key_id"],
        signing_public_key=data["signing_public_key"],
        hpke_public_key=data["hpke_public_key"],
        suite=data["suite"],
        registered_at=at,
        event_id=uuid.uuid4(),
        retired_at=retired_at,
        revoked_at=revoked_at,
    )


async def project(
    pool: asyncpg.Pool, registry: RegistryClient, events: Sequence[Envelope[Any]]
) -> None:
    """Archive ``events`` and run the real ``agent_directory`` projection over them."""
    await archive(EventStore(pool), EventSerializer(CATALOG, registry), events)
    runner = ProjectionRunner(pool, [AgentDirectory()], EventDeserializer(CATALOG, registry))
    await runner.install()
    advanced, failed = await runner.run_once()
    assert failed == 0 and advanced > 0, (advanced, failed)
