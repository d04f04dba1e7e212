"""Budgets through a running pipeline: run requests, costs, budgets, and what came of them."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from producers.publisher import build_event
from schemas.models import Envelope
from schemas.serde import TENANT_HEADER
from schemas.topics import TOPICS, dead_letter_name, physical_name
from streams.budgets import Budgets
from tests.support.archive import eventually
from tests.support.pipeline import CATALOG, Pipeline

DECISIONS = ("agent.run_accepted", "agent.run_rejected")
ALERTS = ("budget.threshold_crossed", "project.budget_exceeded")


def event(
    event_type: str,
    tenant: str,
    subject: str,
    data: Mapping[str, Any],
    *,
    time: datetime | None = None,
) -> Envelope[Any]:
    """A new event, dated ``time`` when given (periods follow event times)."""
    built = build_event(
        CATALOG.get(event_type), subject=subject, tenant_id=tenant, data=data, source="test"
    )
    return built if time is None else built.model_copy(update={"time": time})


def run_request(
    tenant: str, project: str, run_id: str, estimate: int, *, time: datetime | None = None
) -> Envelope[Any]:
    data = {
        "run_id": run_id,
        "project_id": project,
        "agent_name": "developer",
        "task": "fix the flaky test",
        "risk_level": "low",
        "cost_estimate_micros": estimate,
    }
    return event("agent.run_requested", tenant, run_id, data, time=time)


def cost(
    tenant: str, project: str, run_id: str, micros: int, *, time: datetime | None = None
) -> Envelope[Any]:
    data = {
        "run_id": run_id,
        "project_id": project,
        "agent_name": "developer",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost_micros": micros,
        "latency_ms": 800,
    }
    return event("cost.recorded", tenant, run_id, data, time=time)


def run_ended(tenant: str, project: str, run_id: str, *, failed: bool = False) -> Envelope[Any]:
    """``agent.completed``, or ``agent.failed`` when ``failed``."""
    common = {"run_id": run_id, "project_id": project, "agent_name": "developer"}
    if failed:
        data = {**common, "reason": "error", "error_message": "boom"}
        return event("agent.failed", tenant, run_id, data)
    return event(
        "agent.completed", tenant, run_id, {**common, "instance_id": "i-1", "duration_ms": 5}
    )


def budget(
    tenant: str,
    project: str,
    amount: int,
    *,
    period: str | None = None,
    timezone: str | None = None,
    time: datetime | None = None,
) -> Envelope[Any]:
    data = {"project_id": project, "amount_micros": amount, "period": period, "timezone": timezone}
    return event("budget.set", tenant, project, data, time=time)


async def set_budget(pipeline: Pipeline, tenant: str, project: str, amount: int, **kw: Any) -> None:
    """Publish a ``budget.set`` and wait until the projection holds it."""
    envelope = budget(tenant, project, amount, **kw)
    await pipeline.publisher.publish(envelope)

    async def applied() -> bool:
        row = await pipeline.pool.fetchval(
            "SELECT set_event_id FROM budgets WHERE tenant_id = $1 AND project_id = $2",
            tenant,
            project,
        )
        return bool(row == envelope.id)

    await eventually(applied, 30, interval=0.05)


async def wait_decisions(
    pipeline: Pipeline, tenant: str, runs: int, timeout: float = 60.0
) -> dict[str, list[Envelope[Any]]]:
    """The tenant's archived decisions per run id, once ``runs`` runs have one."""
    found: dict[str, list[Envelope[Any]]] = {}

    async def enough() -> bool:
        grouped = defaultdict(list)
        for decision in await pipeline.archived(tenant, *DECISIONS):
            grouped[decision.data.run_id].append(decision)
        found.clear()
        found.update(grouped)
        return len(found) >= runs

    await eventually(enough, timeout, interval=0.1)
    return found


async def wait_projected(pipeline: Pipeline, tenant: str, timeout: float = 30.0) -> None:
    """Until the projection runner has applied every archived event of ``tenant``."""

    async def caught_up() -> bool:
        behind = await pipeline.pool.fetchval(
            "SELECT h.position > coalesce(c.position, 0) FROM chain_heads h "
            "LEFT JOIN projection_checkpoints c "
            "ON c.tenant_id = h.tenant_id AND c.projection = $2 WHERE h.tenant_id = $1",
            tenant,
            Budgets.name,
        )
        return behind is False

    await eventually(caught_up, timeout, interval=0.05)


async def dump_tables(pipeline: Pipeline) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the budgets projection, sorted, for before/after comparisons."""
    dump = {}
    async with pipeline.pool.acquire() as conn:
        for table in Budgets.tables:
            rows = await conn.fetch(f'SELECT * FROM "{table}"')
            dump[table] = sorted((tuple(row.values()) for row in rows), key=repr)
    return dump


async def topic_records(
    pipeline: Pipeline, logical: str, *, dead_letters: bool = False
) -> list[ConsumerRecord]:
    """Every record of a topic (or of its dead-letter twin) up to its current end,
    duplicates included."""
    topic = physical_name(logical, pipeline.topic_prefix)
    if dead_letters:
        topic = dead_letter_name(topic)
    partitions = [TopicPartition(topic, n) for n in range(TOPICS[logical].partitions)]
    reader = AIOKafkaConsumer(
        bootstrap_servers=pipeline.env["LEDGERBUS_KAFKA_BOOTSTRAP"], enable_auto_commit=False
    )
    await reader.start()
    records: list[ConsumerRecord] = []
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await reader.stop()
    return records


def header(record: ConsumerRecord, name: str) -> bytes | None:
    return dict(record.headers or []).get(name)


def of_tenant(records: list[ConsumerRecord], tenant: str) -> list[ConsumerRecord]:
    return [record for record in records if header(record, TENANT_HEADER) == tenant.encode()]
