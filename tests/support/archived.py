"""Real, decodable events in the event store, without running an archiver.

Events are encoded exactly as the publisher encodes them, and the store gets
what the archiver keeps: the Kafka value without its 5-byte Confluent header.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from event_store.store import AppendResult, EventStore, NewEvent
from schemas.models import (
    AgentCompleted,
    AgentHeartbeat,
    AgentRegistered,
    AgentStarted,
    AgentStatus,
    Envelope,
    EventPayload,
    HpkeSuite,
    WorkflowStarted,
)
from schemas.serde import EventSerializer

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _payload(n: int) -> EventPayload:
    run = f"run-{n % 3}"
    match n % 5:
        case 0:
            return AgentStarted(run_id=run, project_id="proj", agent_name="dev", instance_id="i")
        case 1:
            return AgentCompleted(
                run_id=run, project_id="proj", agent_name="dev", instance_id="i", duration_ms=n
            )
        case 2:
            return AgentHeartbeat(
                agent_name="dev",
                instance_id="i",
                key_id="k",
                status=AgentStatus.BUSY,
                active_runs=n,
            )
        case 3:
            return WorkflowStarted(workflow_id=run, project_id="proj", name="n", initiated_by="me")
        case _:
            return AgentRegistered(  # carries bytes: base64 in JSON
                agent_name="dev",
                key_id=f"key-{n}",
                signing_public_key=bytes([n % 256]) * 32,
                hpke_public_key=b"\x00\xff" * 16,
                suite=HpkeSuite.X25519_SHA256_CHACHA20POLY1305,
            )


def sample_events(tenant_id: str, count: int, start: int = 0) -> list[Envelope[Any]]:
    """``count`` events of five types, three subjects and two correlation ids,
    one minute apart from ``EPOCH + start`` minutes."""
    return [
        Envelope.new(
            _payload(n),
            source="test",
            subject=f"run-{n % 3}",
            tenant_id=tenant_id,
            correlation_id=f"corr-{n % 2}",
        ).model_copy(update={"time": EPOCH + timedelta(minutes=n)})
        for n in range(start, start + count)
    ]


async def archive(
    store: EventStore, serializer: EventSerializer, events: Sequence[Envelope[Any]]
) -> AppendResult:
    """Append ``events`` to the store in order, as the archiver would."""
    rows = []
    for event in events:
        record = await serializer.serialize(event)
        _, schema_id = struct.unpack_from(">bI", record.value)
        rows.append(
            NewEvent(
                event_id=event.id,
                tenant_id=event.tenant_id,
                type=event.type,
                subject=event.subject,
                time=event.time,
                schema_id=schema_id,
                body=record.value[5:],
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
                kafka_topic=record.topic,
            )
        )
    return await store.append(rows)
