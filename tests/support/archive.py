"""Published events of several types and tenants, and checks on what the archive holds."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from event_store.chain import GENESIS, link
from event_store.store import EventStore
from producers.publisher import build_event
from schemas.catalog import default_catalog
from schemas.models import Envelope
from schemas.topics import TOPICS, physical_name

CATALOG = default_catalog()

#: One payload per topic the mix spreads over (costs, budgets, workflows, agents).
PAYLOADS: dict[str, dict[str, Any]] = {
    "cost.recorded": {
        "run_id": "run-1",
        "project_id": "proj-1",
        "agent_name": "developer",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost_micros": 540,
        "latency_ms": 812,
    },
    "budget.set": {"project_id": "proj-1", "amount_micros": 200_000_000},
    "workflow.started": {
        "workflow_id": "wf-1",
        "project_id": "proj-1",
        "name": "release",
        "initiated_by": "ada",
    },
    "agent.heartbeat": {
        "agent_name": "qa",
        "instance_id": "qa-1",
        "key_id": "k1",
        "status": "idle",
        "active_runs": 0,
    },
}


def mixed_events(tenants: Sequence[str], count: int) -> list[Envelope[Any]]:
    """``count`` events round-robin over tenants, types (so topics) and subjects."""
    types = list(PAYLOADS)
    return [
        build_event(
            CATALOG.get(types[n % len(types)]),
            subject=f"subject-{n % 13}",
            tenant_id=tenants[n % len(tenants)],
            data=PAYLOADS[types[n % len(types)]],
            source="test",
            correlation_id=f"flow-{n % 5}",
        )
        for n in range(count)
    ]


def ids_by_tenant(events: Sequence[Envelope[Any]]) -> dict[str, set[uuid.UUID]]:
    grouped: dict[str, set[uuid.UUID]] = defaultdict(set)
    for event in events:
        grouped[event.tenant_id].add(event.id)
    return dict(grouped)


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` (plain or async) until it holds; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(interval)


async def wait_archived(pool: asyncpg.Pool, count: int, timeout: float = 30.0) -> None:
    """Until the events table holds ``count`` rows."""

    async def enough() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM events") >= count)

    await eventually(enough, timeout)


async def assert_archived_once(
    store: EventStore, expected: Mapping[str, Collection[uuid.UUID]]
) -> None:
    """Each tenant's chain holds exactly its expected events, once each, at
    positions 1..n, every link recomputed from the stored bytes."""
    assert sorted(await store.tenants()) == sorted(expected)
    for tenant, ids in expected.items():
        events = [event async for event in store.read(tenant)]
        stored = [event.event_id for event in events]
        assert len(stored) == len(set(stored)), f"{tenant}: an event is stored twice"
        assert set(stored) == set(ids), f"{tenant}: events missing or foreign"
        assert [event.position for event in events] == list(range(1, len(ids) + 1))
        prev = GENESIS
        for event in events:
            assert event.prev_hash == prev, f"{tenant}: chain forks at {event.position}"
            assert event.hash == link(prev, event.body), f"{tenant}: bad hash at {event.position}"
            prev = event.hash
        assert (await store.head(tenant)).hash == prev


async def committed_offsets(bootstrap: str, group: str, prefix: str) -> dict[TopicPartition, int]:
    """The group's committed offsets, read by assignment (no group join).

    aiokafka's admin ``list_consumer_group_offsets`` cannot decode the embedded
    broker's OffsetFetch response; the consumer's own request version can.
    """
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = [
            TopicPartition(physical_name(topic, prefix), partition)
            for topic in TOPICS.values()
            for partition in range(topic.partitions)
        ]
        reader.assign(partitions)
        offsets = {tp: await reader.committed(tp) for tp in partitions}
    finally:
        await reader.stop()
    return {tp: offset for tp, offset in offsets.items() if offset is not None}


async def archived_offsets(pool: asyncpg.Pool) -> dict[TopicPartition, int]:
    """Per partition, the offset after the last archived record: what a
    consumer that committed exactly what it archived has committed."""
    rows = await pool.fetch(
        "SELECT kafka_topic, kafka_partition, max(kafka_offset) AS last FROM events "
        "GROUP BY kafka_topic, kafka_partition"
    )
    return {TopicPartition(r["kafka_topic"], r["kafka_partition"]): r["last"] + 1 for r in rows}


def archiver_process(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``ledgerbus archiver ARGS`` as a real process, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledgerbus", "archiver", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
