"""Archivable events for store-level tests, without going through Kafka."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

from event_store.store import NewEvent

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def new_event(
    tenant_id: str,
    n: int = 0,
    *,
    type: str = "agent.started",
    subject: str | None = None,
    correlation_id: str | None = None,
    size: int = 200,
) -> NewEvent:
    """A distinct event whose body is random bytes (the store never decodes bodies)."""
    return NewEvent(
        event_id=uuid.uuid4(),
        tenant_id=tenant_id,
        type=type,
        subject=subject or f"run-{n % 7}",
        time=EPOCH + timedelta(seconds=n),
        schema_id=1,
        body=os.urandom(size),
        correlation_id=correlation_id,
    )
