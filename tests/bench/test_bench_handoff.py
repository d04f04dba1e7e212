"""Handoff latency: agent A's ``handoff`` call → agent B's ``handle`` entered.

Both agents run in this process on a private pipeline (archiver + one streams
worker), so one clock times both ends. The path: A seals the task to B, publishes
``agent.handoff`` + ``agent.run_requested`` → the budget processor accepts the
run (``agent.run_accepted``) → B's consumer claims the run in the journal,
verifies and opens the sealed task → ``handle``. Handoffs are paced (not a
throughput test). Baseline, same run and broker: one aiokafka produce → consume
hop of a record of the same size, with the same 20 ms fetch wait. Also prints
the budget decision's share (event times). Prints p50/p99; asserts only counts.
``make bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.agent import Agent, AgentResult, AgentTask
from consumers.identity import AgentIdentity
from tests.conftest import StackUnderTest
from tests.support.agents import request_run, running_agent, wait_registered
from tests.support.archive import eventually
from tests.support.pipeline import Pipeline, open_pipeline

HANDOFFS = 1_000
PACE_SECONDS = 0.02


@pytest.fixture(scope="module")
async def pipeline(
    stack: StackUnderTest, registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with open_pipeline(stack, registry_url, tmp_path_factory.mktemp("handoff")) as running:
        yield running


class Sender(Agent):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.called: dict[str, float] = {}

    async def handle(self, task: AgentTask) -> AgentResult:
        for n in range(HANDOFFS):
            began = time.perf_counter()
            run_id = await self.handoff("bench-receiver", instructions=f"item {n}")
            self.called[run_id] = began
            await asyncio.sleep(PACE_SECONDS)
        return AgentResult(output=f"{HANDOFFS} handoffs")


class Receiver(Agent):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.entered: dict[str, float] = {}

    async def handle(self, task: AgentTask) -> AgentResult:
        self.entered[task.run_id] = time.perf_counter()
        return AgentResult(output="received")


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


async def kafka_hop(bootstrap: str, topic: str, count: int) -> list[float]:
    """Produce → consume latency of single paced records on one partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await producer.start()
    await consumer.start()
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"k")
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)

        async def receive() -> None:
            while len(latencies) < count:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        if record.key in sent:
                            latencies.append(time.perf_counter() - sent[record.key])

        receiving = asyncio.create_task(receive())
        await asyncio.sleep(1)
        for n in range(count):
            key = f"hop-{n}".encode()
            sent[key] = time.perf_counter()
            await producer.send(topic, b"x" * 600, key=key, partition=0)
            await asyncio.sleep(PACE_SECONDS)
        await asyncio.wait_for(receiving, 60)
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies


async def test_handoff_latency(pipeline: Pipeline, tmp_path: Path) -> None:
    tenant = pipeline.new_tenant()
    sender, receiver = Sender("bench-sender"), Receiver("bench-receiver")
    identities = [
        AgentIdentity.load_or_create(tmp_path / f"{agent.name}.json", agent.name)
        for agent in (sender, receiver)
    ]
    async with (
        running_agent(pipeline, receiver, identities[1], tenant),
        running_agent(pipeline, sender, identities[0], tenant),
    ):
        await wait_registered(pipeline, tenant, "bench-sender", "bench-receiver")
        await request_run(pipeline, tenant, "bench-sender", project="bench")

        async def all_entered() -> bool:
            return len(receiver.entered) >= HANDOFFS and len(sender.called) >= HANDOFFS

        await eventually(all_entered, 300, interval=0.5)
    latencies = [receiver.entered[run] - began for run, began in sender.called.items()]
    assert len(latencies) == HANDOFFS
    requested = {
        event.data.run_id: event.time
        for event in await pipeline.archived(tenant, "agent.run_requested")
    }
    decision = [
        (event.time - requested[event.data.run_id]).total_seconds()
        for event in await pipeline.archived(tenant, "agent.run_accepted")
        if event.data.run_id in sender.called
    ]
    topic = f"{pipeline.topic_prefix}bench-hop-{uuid.uuid4().hex[:6]}"
    baseline = await kafka_hop(pipeline.env["LEDGERBUS_KAFKA_BOOTSTRAP"], topic, 300)
    print(
        f"\nhandoff call -> handle entered, {HANDOFFS} handoffs every {PACE_SECONDS * 1000:.0f} ms:"
        f" {percentiles(latencies)} (aim p99 < 100 ms)"
        f"\nbaseline, one aiokafka produce -> consume hop: {percentiles(baseline)}"
        f" (a handoff is two hops plus the budget decision)"
        f"\nof which run_requested -> run_accepted (event times, budget processor):"
        f" {percentiles(decision)}"
    )
