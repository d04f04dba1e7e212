"""A consumer killed with SIGKILL mid-batch re-delivers only what it had not committed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from producers.publisher import Publisher
from producers.topics import ensure_topics
from schemas.catalog import default_catalog
from schemas.registry_client import RegistryClient
from schemas.serde import EventSerializer
from tests.conftest import Isolation, StackUnderTest
from tests.support.costs import cost_event

pytestmark = pytest.mark.slow
EVENTS = 600


def start_consumer(
    stack: StackUnderTest,
    registry_url: str,
    database_url: str,
    topic: str,
    group: str,
    log: Path,
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.consumer_proc",
                stack.endpoints.kafka_bootstrap,
                registry_url,
                database_url,
                topic,
                group,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )


async def wait_rows(db: asyncpg.Connection, at_least: int, timeout: float = 60) -> int:
    async with asyncio.timeout(timeout):
        while True:
            count: int = await db.fetchval("SELECT count(DISTINCT seq) FROM handled")
            if count >= at_least:
                return count
            await asyncio.sleep(0.05)


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int:
    """The group's committed offset, read without joining the group (assign only).

    aiokafka's admin ``list_consumer_group_offsets`` cannot decode the embedded
    broker's OffsetFetch response; the consumer's own request version can.
    """
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign([tp])
        return await reader.committed(tp) or 0
    finally:
        await reader.stop()


async def test_sigkill_mid_batch_redelivers_only_uncommitted(
    stack: StackUnderTest,
    isolation: Isolation,
    registry: RegistryClient,
    registry_url: str,
    tmp_path: Path,
) -> None:
    db = await asyncpg.connect(isolation.database_url)
    await db.execute("CREATE TABLE handled (event_id text, seq int, pid int, at serial)")
    await ensure_topics(stack.endpoints.kafka_bootstrap, isolation.topic_prefix)
    serializer = EventSerializer(default_catalog(), registry, isolation.topic_prefix)
    async with Publisher(stack.endpoints.kafka_bootstrap, serializer) as publisher:
        # one subject: one partition, where offset order is sequence order
        deliveries = await publisher.publish_many(
            [cost_event(isolation.tenant_id, "one-run", seq) for seq in range(EVENTS)]
        )
    tp = TopicPartition(deliveries[0].topic, deliveries[0].partition)
    first_offset = deliveries[0].offset
    group = f"kill-{uuid.uuid4()}"
    log = tmp_path / "consumer.log"

    first = start_consumer(stack, registry_url, isolation.database_url, tp.topic, group, log)
    await wait_rows(db, 200)
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = await committed_offset(stack.endpoints.kafka_bootstrap, group, tp)
    handled_before = await db.fetchval("SELECT max(seq) FROM handled")
    assert 0 < committed - first_offset <= handled_before + 1, "commits trail handling"

    second = start_consumer(stack, registry_url, isolation.database_url, tp.topic, group, log)
    try:
        await wait_rows(db, EVENTS, timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    rows = await db.fetch("SELECT seq, pid FROM handled ORDER BY at")
    await db.close()

    assert {row["seq"] for row in rows} == set(range(EVENTS)), "no event lost"
    by_second = [row["seq"] for row in rows if row["pid"] == second.pid]
    assert by_second[0] == committed - first_offset, "resumed exactly at the committed offset"
    redelivered = [
        row["seq"]
        for row in rows
        if row["pid"] == first.pid and row["seq"] >= committed - first_offset
    ]
    assert sorted(by_second) == list(range(committed - first_offset, EVENTS))
    assert len(rows) == EVENTS + len(redelivered), "only uncommitted events came twice"
